"""The real upstream: its pinned source, its own isolated environment, and its run at twin scale."""
