"""Launch the face editor: python app.py [--model DIR] [--device cpu] [--host 127.0.0.1] [--port 7860] [--share]

The same as `python -m app serve ...`; `import app` (the package) sets the offline environment before Gradio loads.
"""
import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
