"""Where the project's shipped files live (prompts/ and seeds/ sit beside the flows package)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("PERSONALOOM_HOME", Path(__file__).resolve().parent.parent))
PROMPTS_DIR = PROJECT_ROOT / "prompts"
SEEDS_DIR = PROJECT_ROOT / "seeds"
