"""The face editor's Gradio UI; all latent logic is in flow_model.editing.EditorService."""
