"""What LiveKit's text console leaves out: the agent's greeting.

The text console prints what ``session.run(user_input=...)`` returns, i.e. only the replies
to what the user typed. A greeting spoken from ``on_enter`` belongs to no such run, so a new
user sees an empty screen where a caller would hear "Hi, this is Alex". This prints what the
agent says before the user's first words, the way the console prints its replies.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import AgentSession, ConversationItemAddedEvent, cli, llm


def show_greeting_in_text_console(session: AgentSession[Any]) -> None:
    """In ``console --text``, print the agent's first message; elsewhere do nothing."""
    console = cli.AgentsConsole.get_instance()
    rich_console = getattr(console, "console", None)  # LiveKit's terminal, in console mode
    if not console.enabled or console.console_mode != "text" or rich_console is None:
        return
    from rich.text import Text

    shown = False

    def _on_item(event: ConversationItemAddedEvent) -> None:
        nonlocal shown
        item = event.item
        if shown or not isinstance(item, llm.ChatMessage):
            return
        shown = True  # only what the agent says before the user's first words is a greeting
        if item.role != "assistant":
            return
        text = item.text_content or ""
        if not text:
            return
        rich_console.print()
        rich_console.print(Text.assemble(("  \u25cf ", "#6BCB77"), ("Agent", "bold #6BCB77")))
        for line in text.split("\n"):
            rich_console.print(Text(f"    {line}"))

    session.on("conversation_item_added", _on_item)
