# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka`` errors: user errors give one line (exit 2), bugs give their traceback (exit 1).

A bug that surfaces as a RuntimeError (or anything that is not a user error) must not
be reduced to a tidy one-line message: the traceback is what makes it fixable.
``--debug``/``-v`` shows the traceback of user errors as well.
"""
import os
from pathlib import Path
import subprocess
import sys
import textwrap

from ldka_ros.cli.main import main
from ldka_ros.errors import UserError
from ldka_ros.registry.registry import RegistryError
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str, prelude: str = '') -> subprocess.CompletedProcess:
    """Run ``ldka`` in a fresh interpreter; ``prelude`` runs first (to plant a bug)."""
    code = textwrap.dedent(prelude) + textwrap.dedent("""
        import sys
        from ldka_ros.cli.main import main
        sys.exit(main(sys.argv[1:]))
    """)
    return subprocess.run([sys.executable, '-c', code, *argv], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1'})


def test_missing_file_is_one_line_exit_2(tmp_path, capsys):
    argv = ['export', '--checkpoint', str(tmp_path / 'missing.pt'),
            '--out', str(tmp_path / 'm.onnx')]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert 'ldka export: error: checkpoint' in err and 'does not exist' in err
    assert 'Traceback' not in err
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'does not exist' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.parametrize('flag', ['--debug', '-v'])
def test_debug_flag_prints_the_traceback_of_user_errors(tmp_path, capsys, flag):
    argv = [flag, 'export', '--checkpoint', str(tmp_path / 'c.pt'), '--out',
            str(tmp_path / 'model.txt')]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert 'Traceback' in err and 'ValueError' in err
    assert err.rstrip().endswith('--out must end in .onnx, got ' + str(tmp_path / 'model.txt'))
    proc = run_cli(*argv)
    assert proc.returncode == 2 and 'Traceback' in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize('error', [RuntimeError('tensor shapes disagree in the decoder'),
                                   KeyError('decoder.weight'),
                                   AttributeError("'NoneType' has no attribute 'shape'")])
def test_a_bug_prints_its_traceback_and_exits_1(tmp_path, capsys, monkeypatch, error):
    import ldka_ros.learning.checkpoint as checkpoint

    def broken(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(checkpoint, 'load_checkpoint', broken)
    rc = main(['export', '--checkpoint', str(tmp_path / 'c.pt'), '--out',
               str(tmp_path / 'm.onnx')])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert 'Traceback' in err and 'in broken' in err and type(error).__name__ in err
    assert f'ldka export: internal error ({type(error).__name__})' in err


def test_a_bug_in_a_subprocess_shows_where(tmp_path):
    prelude = """
        import ldka_ros.learning.checkpoint as checkpoint

        def load_checkpoint(path, map_location='cpu'):
            raise RuntimeError('index 7 is out of range for the class table')

        checkpoint.load_checkpoint = load_checkpoint
    """
    proc = run_cli('export', '--checkpoint', str(tmp_path / 'c.pt'), '--out',
                   str(tmp_path / 'm.onnx'), prelude=prelude)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'Traceback' in proc.stderr and 'in load_checkpoint' in proc.stderr
    assert 'index 7 is out of range' in proc.stderr


@pytest.mark.parametrize('error', [UserError('parity check failed: argmax agreement 90%'),
                                   RegistryError('version v0009 does not exist'),
                                   FileNotFoundError('no .jpg/.png images in /data')])
def test_project_user_errors_stay_one_line(tmp_path, capsys, monkeypatch, error):
    import ldka_ros.learning.checkpoint as checkpoint

    def refuse(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(checkpoint, 'load_checkpoint', refuse)
    rc = main(['export', '--checkpoint', str(tmp_path / 'c.pt'), '--out',
               str(tmp_path / 'm.onnx')])
    err = capsys.readouterr().err
    assert rc == 2 and err == f'ldka export: error: {error}\n'
