"""The tiny offline Qwen2-VL used by tests, demos and smoke runs (no model hub needed)."""
