"""Saving and pushing REALM models with everything a Hub repository needs.

`RealmPreTrainedModel.save_pretrained` / `push_to_hub` call these: transformers writes model.safetensors and
config.json, then this module adds the tokenizer (when one is given), the model's own code with the `auto_map` that
lets transformers load it without realm-hf (`remote_code`), and a README.md model card (`model_card`).

transformers' own `push_to_hub` replaces README.md with a generic card after `save_pretrained`; here the card is
written by `save_pretrained` and the folder is uploaded as is, in one commit, through huggingface_hub's `HfApi`.
pretrained.py imports this module, so it (with model_card.py and remote_code.py) is part of the remote code too: a
model loaded with `trust_remote_code=True` saves and pushes the same files.
"""

import os
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from modeling_realm.hub.model_card import model_card
from modeling_realm.hub.remote_code import save_model_code, save_tokenizer_code
from tokenization.storage import atomic_write_text

HUB_SAVE_KWARGS = ("commit_message", "commit_description", "create_pr", "private", "revision")


def save_for_sharing(model, base_save, save_directory, *args, tokenizer=None, write_card: bool = True, **kwargs):
    """`base_save` (transformers' `save_pretrained`) plus tokenizer files, remote code and the model card.

    `repo_id` (optional) names the model in the card's load commands (default: `save_directory`); with
    `push_to_hub=True` it is also the repository to push to (default: the folder's name), as in transformers.
    """
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer must be a transformers tokenizer (with save_pretrained), got "
                        f"{type(tokenizer).__name__}; pass e.g. RealmTokenizerFast.from_pretrained(...).")
    push = kwargs.pop("push_to_hub", False)
    repo_id = kwargs.pop("repo_id", None)
    hub_kwargs = {name: kwargs.pop(name) for name in HUB_SAVE_KWARGS if name in kwargs} if push else {}
    tags = kwargs.pop("tags", None)
    is_main_process = kwargs.get("is_main_process", args[0] if args else True)
    on_this_rank = model.should_save_on_this_rank(is_main_process)
    directory = Path(save_directory)
    api = None
    if push and on_this_rank:
        api = HfApi(token=kwargs.get("token"))
        repo_id = api.create_repo(repo_id or directory.resolve().name, private=hub_kwargs.pop("private", None),
                                  exist_ok=True).repo_id
    before = _timestamps(directory)
    base_save(save_directory, *args, **kwargs)
    if not on_this_rank or not directory.is_dir():  # transformers logs and saves nothing when given a file path
        return
    write_sharing_files(model, directory, repo_id or str(save_directory), tokenizer, write_card, tags)
    if push:
        upload_folder(api, directory, repo_id, changed_files(directory, before), **hub_kwargs)


def write_sharing_files(model, directory: Path, repo_id: str, tokenizer=None, write_card: bool = True, tags=None):
    """Tokenizer files, remote code + auto_map, and README.md, next to an already saved model in `directory`."""
    tokenizer_code = []
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
        tokenizer_code = save_tokenizer_code(tokenizer, directory)
    model_code = save_model_code(model, directory)
    if write_card:
        text = model_card(model, repo_id, tokenizer=tokenizer, code_files=model_code,
                          tokenizer_code_files=tokenizer_code, tags=tags)
        atomic_write_text(directory / "README.md", text)


def push_model(model, repo_id: str, *, tokenizer=None, write_card: bool = True, commit_message: str | None = None,
               commit_description: str | None = None, private: bool | None = None, token: bool | str | None = None,
               revision: str | None = None, create_pr: bool = False, max_shard_size: int | str | None = "50GB",
               tags: list[str] | None = None):
    """Save `model` (and `tokenizer`) to a temporary folder and upload it to `repo_id` in one commit.

    Returns huggingface_hub's `CommitInfo`.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="realm-push-") as folder:
        model.save_pretrained(folder, tokenizer=tokenizer, model_card=write_card, repo_id=repo_id, tags=tags,
                              max_shard_size=max_shard_size)
        return upload_folder(api, Path(folder), repo_id, changed_files(Path(folder), {}),
                             commit_message=commit_message, commit_description=commit_description,
                             revision=revision, create_pr=create_pr)


def upload_folder(api: HfApi, directory: Path, repo_id: str, files: list[str], *, commit_message=None,
                  commit_description=None, revision=None, create_pr=False):
    """One commit adding `files` (paths relative to `directory`) to the existing model repository `repo_id`."""
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(directory / name)) for name in files]
    return api.create_commit(repo_id, operations, commit_message=commit_message or "Upload REALM model",
                             commit_description=commit_description, revision=revision, create_pr=create_pr)


def _timestamps(directory: Path) -> dict[str, float]:
    if not directory.is_dir():
        return {}
    return {name: os.path.getmtime(directory / name) for name in _all_files(directory)}


def changed_files(directory: Path, before: dict[str, float]) -> list[str]:
    """Files of `directory` (relative paths) that are new or modified since the `before` timestamps."""
    return [name for name in _all_files(directory)
            if name not in before or os.path.getmtime(directory / name) > before[name]]


def _all_files(directory: Path) -> list[str]:
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*")
                  if path.is_file() and not path.name.startswith("."))
