"""Policies: scripted (oracle, noisy, random) and model backends (hf, vllm, openai)."""

from boxgym.policies.base import Conversation, Message, Policy

__all__ = ["Conversation", "Message", "Policy"]
