"""`personaloom push`: a published version to a Hugging Face Hub dataset repo, as it is on disk.

The version folder goes up whole: its card (README.md, whose `configs` header names the
Parquet tables and splits, so `datasets.load_dataset(OWNER/NAME)` reads it), the tables and manifest.json.
Every Hub or network failure is one line naming the repo and what to do; the token is never in it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from personaloom import paths
from personaloom.errors import EnvironmentFailure, UserError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


def push_version(
    version_dir: Path, repo: str, *, token: str | None, private: bool, revision: str | None
) -> str:
    """Upload `version_dir` to the dataset repo `repo` (created if missing; `private` applies to a new
    repo only), on branch `revision` (created if missing; default: main). Returns the commit URL, which
    ends in /commit/<oid>."""
    if not (version_dir / "manifest.json").is_file():
        raise UserError(
            f"{version_dir} has no manifest.json: not a published version (half copied?): push a version "
            f"`personaloom versions {version_dir.parent.name}` lists"
        )
    if not (version_dir / "README.md").is_file():
        raise UserError(f"{version_dir} has no README.md (its dataset card): restore the version, then push")
    if not REPO_ID.fullmatch(repo):
        raise UserError(f"--repo {repo!r}: give OWNER/NAME, e.g. me/{version_dir.parent.name}")
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(f"push needs huggingface_hub: {paths.install_hint('hub')}") from None
    token = token or huggingface_hub.get_token()
    if not token:
        raise UserError(f"no Hugging Face token: set HF_TOKEN or give --token (a write token, {TOKENS_PAGE})")
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # no retry notes around the one line of an error
    api = huggingface_hub.HfApi(token=token)
    try:
        with warnings.catch_warnings():  # the card's metadata warnings: the card is ours, the build wrote it
            warnings.simplefilter("ignore")
            api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            if revision and not revision.startswith("refs/"):
                api.create_branch(repo, branch=revision, repo_type="dataset", exist_ok=True)
            info = api.upload_folder(
                repo_id=repo,
                folder_path=version_dir,
                repo_type="dataset",
                revision=revision,
                commit_message=f"personaloom {version_dir.parent.name}@{version_dir.name}",
            )
    except Exception as e:
        message = _failure(e, repo, api.endpoint)
        if message is None:
            raise
        raise _error(message.replace(token, "***")) from None
    return str(info.commit_url)


def _error(message: str) -> UserError:
    """A refusal the user fixes (token, access, name): exit 2; the Hub or the network: exit 1."""
    return UserError(message) if message.startswith("the Hub refused") else EnvironmentFailure(message)


def _transport(e: Exception) -> bool:
    """A network failure of the Hub client's HTTP library: httpx2 (huggingface_hub 2.x), httpx (1.x) or
    requests (0.x), matched by name so none of them is imported here."""
    return any(
        c.__name__ in ("TransportError", "ConnectionError", "Timeout")
        and c.__module__.split(".")[0] in ("httpx", "httpx2", "requests")
        for c in type(e).__mro__
    )


def _failure(e: Exception, repo: str, endpoint: str) -> str | None:
    """The one line for a failed push, or None for an error that is not the Hub's nor the network's."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    again = "then re-run the same command"
    if isinstance(e, OfflineModeIsEnabled):
        return f"cannot push to {repo}: HF_HUB_OFFLINE is set: unset it, {again}"
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        said = (e.server_message or "").strip().splitlines()
        said_text = f": {said[0][:200]}" if said else ""
        if status == 401:
            return (
                f"the Hub refused the token for {repo} (401{said_text}): give a valid write token as "
                f"HF_TOKEN or --token ({TOKENS_PAGE}), {again}"
            )
        if status == 403:
            return (
                f"the Hub refused the push to {repo} (403{said_text}): use a token with write access to "
                f"{repo.split('/')[0]}, or push to a repo of your own"
            )
        if status == 404:
            return (
                f"the Hub refused the push to {repo} (404{said_text}): check the repo name and --revision, "
                f"and that the token may write there"
            )
        if status == 429 or status >= 500:
            return f"the Hub at {endpoint} answered {status} for {repo}{said_text}: wait a little, {again}"
        return f"the Hub refused the push to {repo} ({status}{said_text}): check --repo and --revision"
    if isinstance(e, ConnectionError | TimeoutError) or _transport(e):
        return (
            f"cannot reach the Hub at {endpoint} to push {repo} ({type(e).__name__}): check the network "
            f"(and HF_ENDPOINT if set), {again}"
        )
    if isinstance(e, ValueError) and "README.md" in str(e):
        first = str(e).splitlines()[1:2] or [""]
        return f"the Hub refused the card (README.md) of the push to {repo}: {first[0].lstrip('- ')}"
    return None
