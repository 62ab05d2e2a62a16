"""The run loop: every unfinished stage of the plan in order, after repairing damaged ones."""
