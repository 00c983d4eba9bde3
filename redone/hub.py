"""Publishing a trained model: ``redone model push DIR --repo ID [--private] [--dry-run]``.

Features
- Uploads a ``final/``-style model dir to the Hugging Face Hub with ``huggingface_hub``
  (``HfApi().create_repo`` then ``upload_folder``), only the dir's own top-level files: never a
  subfolder (checkpoints, caches), hidden file or temp file, and never pickled weights.
- ``--dry-run`` works offline: lists every file that would be uploaded with its size, and validates
  the card's YAML metadata the way the Hub reads it: ``license`` a Hub license id (``other`` needs a
  ``license_name``), ``base_model`` (when present) in Hub id form, ``datasets`` a list of Hub ids (may be
  empty only when the card's "## Datasets" section names the data), ``pipeline_tag`` and
  ``library_name`` present.
- A real push checks the same things first, then needs the network: with ``HF_HUB_OFFLINE=1`` (redone's
  default) it stops with a message saying how to go online.

Errors (``RedoneError``, one line): a dir without config.json or safetensors weights, pickled weights in
it, a missing or invalid card (naming the field), a repo id not in ``owner/name`` form, offline mode, and
the Hub's own refusals (authentication, permissions) passed on in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from redone.card import is_hub_id, read_card
from redone.errors import RedoneError

# Hub license identifiers (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl
gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma
unknown other
""".split())
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_LICENSE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-.")


# ---------------------------------------------------------------- what gets uploaded


def upload_files(model_dir: str | Path) -> list[tuple[str, int]]:
    """(name, size in bytes) of every file a push uploads: the dir's own visible top-level files."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RedoneError(f"model push: {model_dir} is not a directory")
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                   and not p.name.endswith((".tmp", ".lock")))
    names = {p.name for p in files}
    if "config.json" not in names or not any(name.endswith(".safetensors") for name in names):
        raise RedoneError(f"model push: {model_dir} is not a final model dir (it needs config.json and "
                          "*.safetensors weights; checkpoint dirs and caches are never pushed)")
    pickled = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise RedoneError(f"model push: {model_dir} holds pickled files ({', '.join(pickled)}); "
                          "redone pushes safetensors weights only")
    return [(p.name, p.stat().st_size) for p in files]


# ---------------------------------------------------------------- card validation


def validate_card(card: str | Path) -> dict:
    """Check a README.md card's metadata as the Hub reads it; returns the metadata."""
    card = Path(card)
    if not card.is_file():
        raise RedoneError(f"model push: no model card {card} (redone writes README.md into every final dir)")
    metadata, body = read_card(card)
    check_card_metadata(metadata, body, where=str(card))
    return metadata


def check_card_metadata(metadata: dict, body: str, where: str = "README.md") -> None:
    """Raise naming the first field the Hub would reject or that a published model card needs."""
    _check_license(metadata, where)
    base = metadata.get("base_model")
    if base is not None:
        bases = base if isinstance(base, list) else [base]
        bad = [b for b in bases if not is_hub_id(b)]
        if bad or not bases:
            raise RedoneError(f"{where}: base_model {bad[0] if bad else base!r} is not a Hub id (owner/name); "
                              "remove it or name the base model's Hub repo")
    _check_datasets(metadata, body, where)
    for key in ("pipeline_tag", "library_name"):
        value = metadata.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RedoneError(f"{where}: {key} is missing from the card metadata")
    tags = metadata.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RedoneError(f"{where}: tags must be a list of strings")


def _check_license(metadata: dict, where: str) -> None:
    license_id = metadata.get("license")
    if license_id is None:
        raise RedoneError(f"{where}: license is missing from the card metadata")
    if license_id not in HUB_LICENSES:
        raise RedoneError(f"{where}: license {license_id!r} is not a Hub license id "
                          "(see huggingface.co/docs/hub/repositories-licenses; use 'other' with license_name)")
    if license_id == "other":
        name = metadata.get("license_name")
        if not isinstance(name, str) or not name or not set(name) <= _LICENSE_NAME_CHARS:
            raise RedoneError(f"{where}: license_name is missing or not an id like 'my-license-1.0' "
                              "(required with license: other)")


def _check_datasets(metadata: dict, body: str, where: str) -> None:
    datasets = metadata.get("datasets")
    if not isinstance(datasets, list):
        raise RedoneError(f"{where}: datasets is missing from the card metadata (a list of Hub dataset ids)")
    bad = [d for d in datasets if not is_hub_id(d)]
    if bad:
        raise RedoneError(f"{where}: datasets entry {bad[0]!r} is not a Hub dataset id (owner/name)")
    if not datasets and not _names_data(body):
        raise RedoneError(f"{where}: datasets is empty and the card has no '## Datasets' table naming the "
                          "training data")


def _names_data(body: str) -> bool:
    """Whether the body has a '## Datasets' section with at least one table row below its header."""
    lines = body.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "## Datasets")
    except StopIteration:
        return False
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append(line)
    return len(rows) >= 3  # header, separator, one row


# ---------------------------------------------------------------- push


def push_model(model_dir: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
               log=print) -> list[tuple[str, int]]:
    """Validate, then (unless ``dry_run``) create ``repo_id`` and upload the dir; returns the file list."""
    model_dir = Path(model_dir)
    if not is_hub_id(repo_id):
        raise RedoneError(f"model push: --repo {repo_id!r} is not a Hub repo id (owner/name)")
    files = upload_files(model_dir)
    metadata = validate_card(model_dir / "README.md")
    if not dry_run:
        _require_online()
    total = sum(size for _, size in files)
    verb = "would upload" if dry_run else "uploading"
    log(f"[redone] {verb} {len(files)} files ({_human(total)}) from {model_dir} to "
        f"{repo_id} ({'private' if private else 'public'}):")
    for name, size in files:
        log(f"  {size:>14,}  {name}")
    log(f"[redone] card metadata OK: license {metadata['license']}, base_model {metadata.get('base_model', '(none)')}, "
        f"datasets {metadata['datasets'] or '(none on the Hub)'}")
    if dry_run:
        return files
    _upload(model_dir, repo_id, [name for name, _ in files], private)
    log(f"[redone] pushed to https://huggingface.co/{repo_id}")
    return files


def _require_online() -> None:
    from huggingface_hub import constants

    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or constants.HF_HUB_OFFLINE:
        raise RedoneError("model push needs the network: set HF_HUB_OFFLINE=0 and a token "
                          "(HF_TOKEN or `hf auth login`); --dry-run works offline")


def _upload(model_dir: Path, repo_id: str, names: list[str], private: bool) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=model_dir, repo_type="model", allow_patterns=names,
                          commit_message=f"Upload {model_dir.name} with redone")
    except _hub_errors() as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RedoneError(f"model push to {repo_id} failed: {type(err).__name__}: {first_line}") from None


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What the Hub client raises for refusals (HTTP status, no token) and for an unreachable network."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    errors: tuple[type[BaseException], ...] = (HfHubHTTPError, LocalTokenNotFoundError, OSError)
    try:  # the HTTP client huggingface_hub uses (httpx2 in huggingface_hub 2.x)
        import httpx2

        errors += (httpx2.HTTPError,)
    except ImportError:
        pass
    return errors


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size} B"


# ---------------------------------------------------------------- CLI


def add_model_parsers(model_subparsers) -> None:
    """``redone model push ...`` (added to the existing ``model`` subcommands)."""
    push = model_subparsers.add_parser("push", help="upload a final model dir to the Hugging Face Hub")
    push.add_argument("model_dir", metavar="DIR", help="a final/ model dir (config.json, weights, README.md)")
    push.add_argument("--repo", required=True, help="Hub repo id, owner/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--dry-run", action="store_true",
                      help="offline: list the files and validate the card, upload nothing")
    push.set_defaults(func=run_push)


def run_push(args) -> int:
    push_model(args.model_dir, args.repo, private=args.private, dry_run=args.dry_run)
    return 0
