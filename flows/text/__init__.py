"""Text shared by stages, agents and readers: languages by code, word splitting, token counts."""
