"""The HTTP/WebSocket side of gptjobs. Nothing here imports torch or worker/."""
