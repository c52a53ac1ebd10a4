"""Publish a run on the Hugging Face Hub: its Hub folder (weights, config, model card) uploaded with huggingface_hub.

    headstart push RUN OWNER/NAME [--private] [--dry-run]

The Hub folder is RUN/export/hub, exported again only when it is missing or older than the
checkpoint (an up-to-date one is reused, and the log says so). The token comes from where huggingface_hub looks (`HF_TOKEN`, or `hf auth login`'s file). A
failure to reach the Hub (offline, bad token, no rights) is one line, never a traceback.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from headstart.core.errors import HeadstartError
from headstart.core.runs import resolve_checkpoint

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class PushResult:
    folder: Path
    url: str
    files: list[tuple[str, int]]  # (name, bytes) of what went (or would go) up
    reused: bool = False  # the Hub folder was up to date: not exported again


def push(run_or_checkpoint: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> PushResult:
    """Export the run's Hub folder (RUN/export/hub) and upload it to the repository `repo_id`.

    Examples:
        >>> headstart.push("runs/hymenoptera-tf_efficientnet_lite0", "me/ants-vs-bees", dry_run=True).files
    """
    from headstart.deploy.hub import export_hub

    if not REPO_ID.match(repo_id):
        raise HeadstartError(f"repository id '{repo_id}' is not OWNER/NAME (letters, digits, '.', '_', '-')")
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    folder = checkpoint.parent / "export" / "hub"
    reused = up_to_date(folder, checkpoint)
    if reused:
        log.info(
            "push: reusing %s (its files are newer than %s; re-export: headstart export --format hub)",
            folder,
            checkpoint,
        )
    else:
        folder = export_hub(run_or_checkpoint, folder)
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
    url = f"https://huggingface.co/{repo_id}"
    if not dry_run:
        upload(folder, repo_id, private)
    return PushResult(folder, url, files, reused)


def up_to_date(folder: Path, checkpoint: Path) -> bool:
    """Whether `folder` is a Hub export whose every file was written after `checkpoint` last changed."""
    from headstart.deploy.hub import is_hub_folder

    if not is_hub_folder(folder):
        return False
    files = [p for p in folder.iterdir() if p.is_file()]
    return min(p.stat().st_mtime_ns for p in files) >= checkpoint.stat().st_mtime_ns


def upload(folder: Path, repo_id: str, private: bool) -> None:
    try:
        import huggingface_hub
    except ImportError:
        raise HeadstartError("pushing needs huggingface_hub; pip install huggingface_hub") from None
    token = huggingface_hub.get_token()
    if token is None:
        raise HeadstartError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Upload model trained with headstart"
        )
    except Exception as err:  # noqa: BLE001 - network, auth and Hub errors all end as one line for the user
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise HeadstartError(f"could not push to {repo_id} ({type(err).__name__}: {reason})") from None
