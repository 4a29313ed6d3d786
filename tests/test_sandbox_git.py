"""Issue 22, row 1's second half: pairline's own git calls (outside the sandbox) run nothing the
repository chose, even when a command did get to rewrite `.git/config` or `.gitattributes`.

Each test plants what a command could plant (the test writes it, as a process that outlived its
command would), then drives pairline's real git calls and checks that the planted program never ran.
Only git is needed, not any kernel feature.
"""

from __future__ import annotations

import subprocess

import pytest

from pairline.assistant import gitsafe
from pairline.assistant.agent_tools import Tools
from pairline.assistant.gitsafe import git_output, git_status, protect
from pairline.assistant.sandbox import Limits, Sandbox
from pairline.assistant.workspace import Workspace, read_text_file
from pairline.errors import PairlineError
from tests.assistant_helpers import git, git_repo


@pytest.fixture
def repo(tmp_path):
    return git_repo(tmp_path, {"a.txt": b"1\n2\n3\n4\n5\n6\n7\n"})


@pytest.fixture
def pwned(tmp_path):
    return tmp_path / "outside" / "pwned"  # a planted program would create it; the folder does not exist yet


def _plant(root, pwned, *settings: tuple[str, str], attributes: str = "") -> None:
    for key, value in settings:
        git(root, "config", key, value.replace("PWN", f"mkdir -p {pwned.parent}; touch {pwned}"))
    if attributes:
        (root / ".gitattributes").write_text(attributes)


def _edit(ws: Workspace, path, text: str):
    _, fp = read_text_file(path)
    return ws.apply([(path, text, fp)], "edit")


def test_clean_smudge_and_process_filters_do_not_run(repo, pwned):
    _plant(repo, pwned, ("filter.x.clean", "sh -c 'PWN; cat'"), ("filter.x.smudge", "sh -c 'PWN; cat'"),
           ("filter.x.process", "sh -c 'PWN'"), ("filter.x.required", "true"), attributes="* filter=x\n")
    ws = Workspace(repo, git=True)
    entry = _edit(ws, repo / "a.txt", "edited\n")  # git add, config, commit, rev-parse
    git_status(repo)
    ws.undo()  # reset
    assert not pwned.exists()
    assert entry.commit and git(repo, "show", f"{entry.commit}:a.txt") == "edited\n"  # stored as is


def test_filter_defined_in_an_included_worktree_file_does_not_run(repo, pwned):
    # the include points at a file in the worktree, which a command may rewrite at any time
    (repo / "evil.cfg").write_text(f'[filter "y"]\n\tclean = sh -c \'touch {pwned}; cat\'\n\trequired = true\n')
    git(repo, "config", "include.path", "../evil.cfg")
    (repo / ".gitattributes").write_text("*.txt filter=y\n")
    ws = Workspace(repo, git=True)
    _edit(ws, repo / "a.txt", "edited\n")
    git_status(repo)
    assert not pwned.exists()


def test_diff_textconv_and_external_diff_do_not_run(repo, pwned):
    _plant(repo, pwned, ("diff.y.textconv", "sh -c 'PWN; cat \"$0\"'"), ("diff.y.command", "sh -c 'PWN'"),
           ("diff.external", "sh -c 'PWN'"), attributes="* diff=y\n")
    ws = Workspace(repo, git=True)
    start = git(repo, "rev-parse", "HEAD").strip()
    _edit(ws, repo / "a.txt", "edited\n")
    diff = git_output(repo, "diff", start, "HEAD")  # as the agent's final diff and resume check
    git_output(repo, "diff", "--name-only", start, "HEAD")
    assert not pwned.exists()
    assert "+edited" in diff


def test_merge_driver_does_not_run_on_a_revert(repo, pwned):
    # `undo` reverts the edit's commit when others followed; a revert that needs a three-way merge of
    # a file would run the file's merge driver
    ws = Workspace(repo, git=True)
    entry = _edit(ws, repo / "a.txt", "1\ntwo\n3\n4\n5\n6\n7\n")
    (repo / "a.txt").write_text("1\ntwo\n3\n4\n5\nsix\n7\n")
    git(repo, "commit", "-q", "-am", "user")
    _plant(repo, pwned, ("merge.z.driver", "sh -c 'PWN; false'"), attributes="* merge=z\n")
    proc = gitsafe.run_git(repo, "revert", "--no-edit", entry.commit, check=False)
    gitsafe.run_git(repo, "revert", "--abort", check=False)
    assert not pwned.exists()
    assert proc.returncode != 0  # with the driver switched off the merge fails: nothing is merged blindly


def test_hooks_fsmonitor_and_signing_do_not_run(repo, pwned):
    _plant(repo, pwned, ("core.fsmonitor", "sh -c 'PWN'"), ("core.hooksPath", ".git/hooks"),
           ("commit.gpgSign", "true"), ("gpg.program", "sh -c 'PWN; false'"))
    for hook in ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "reference-transaction",
                 "post-index-change"):
        h = repo / ".git" / "hooks" / hook
        h.write_text(f"#!/bin/sh\nmkdir -p {pwned.parent}; touch {pwned}\n")
        h.chmod(0o755)
    ws = Workspace(repo, git=True)
    entry = _edit(ws, repo / "a.txt", "edited\n")
    git_status(repo)
    ws.undo()
    assert not pwned.exists() and entry.commit


def test_the_guard_restores_git_files_right_before_each_git_call(repo, pwned):
    # a command's leftover process (where nothing killed it) rewrites .git/config after the command
    # ended and after the guard's end-of-command check: the next git call puts it back first
    ws = Workspace(repo, git=True)
    tools = Tools(ws, Sandbox(repo, Limits(timeout_s=5)), "true")
    before = (repo / ".git" / "config").read_bytes()
    _plant(repo, pwned, ("filter.x.clean", "sh -c 'PWN; cat'"), ("core.fsmonitor", "sh -c 'PWN'"),
           attributes="* filter=x\n")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* filter=x\n")
    _edit(ws, repo / "a.txt", "edited\n")
    assert (repo / ".git" / "config").read_bytes() == before
    assert not (repo / ".git" / "info" / "attributes").exists()
    assert not pwned.exists() and tools.guard is not None


def test_the_guard_never_writes_through_a_symlinked_git_folder(repo, tmp_path):
    guard = protect(repo)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep").write_text("mine\n")
    samples = sorted(p.name for p in (repo / ".git" / "hooks").iterdir())
    subprocess.run(["rm", "-rf", str(repo / ".git" / "hooks")], check=True)
    (repo / ".git" / "hooks").symlink_to(outside)
    guard.restore()
    assert sorted(p.name for p in outside.iterdir()) == ["keep"] and (outside / "keep").read_text() == "mine\n"
    assert not (repo / ".git" / "hooks").is_symlink()
    assert sorted(p.name for p in (repo / ".git" / "hooks").iterdir()) == samples


def test_a_driver_name_git_could_not_be_told_about_stops_git(repo):
    git(repo, "config", "filter.a=b.clean", "cat")
    with pytest.raises(PairlineError, match="cannot switch off"):
        gitsafe.run_git(repo, "status")


def test_diff_like_commands_get_no_ext_diff():
    assert gitsafe._with_no_ext_diff(("-c", "a=b", "diff", "X")) == ["-c", "a=b", "diff", "--no-ext-diff",
                                                                      "--no-textconv", "X"]
    assert gitsafe._with_no_ext_diff(("add", "--", "diff")) == ["add", "--", "diff"]
