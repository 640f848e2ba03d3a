"""The demo: a gradio-free retrieval service (``app.service``) and the Gradio UI (``app.ui``)."""
