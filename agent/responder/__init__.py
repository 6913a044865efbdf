"""The sales conversation the free LLM speaks: lead extraction, the script, and its responder."""
