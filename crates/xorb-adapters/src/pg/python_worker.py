# One warm Python for xorbctl's Alembic calls (docs/design/rollback-semantics.md, "One warm Python").
#
# xorbctl starts this with the venv's python (`python -c`, the text comes from the binary) and keeps it for the
# life of the process: importing Alembic and SQLAlchemy costs more than most migrations of a rollback, and a run
# asks Alembic six to eight times. Requests and replies are one JSON object per line:
#
#   {"alembic": ["-c", INI, "downgrade", REV], "env": {"DATABASE_URL": "...", "XORB_STATEMENT_TIMEOUT_MS": null}}
#   {"script": PATH}                                   (runs PATH as __main__, as `python PATH` would)
#   -> {"code": 0, "stdout": "...", "stderr": "..."}
#
# The first line written is {"ready": true}, or {"ready": false, "error": ...} when Alembic cannot be imported.
# Secrets arrive only in "env" on stdin, are set for one request and removed after it. Everything a request
# prints goes into its reply; nothing else reaches the real stdout, which carries only replies. The process ends
# when its stdin closes or xorbctl is gone (checked every 200 ms, so a killed xorbctl leaves no migration
# running: PostgreSQL rolls back the transaction of the connection that went away).
import io
import json
import os
import sys
import threading
import time
import traceback


class Sink(io.TextIOBase):
    """sys.stdout and sys.stderr for the whole process: Alembic's Config binds sys.stdout when it is imported,
    and logging's handlers bind sys.stderr when env.py configures them, so both are this object, whose buffer
    is the current request's."""

    encoding = "utf-8"

    def __init__(self):
        self.buf = io.StringIO()

    def writable(self):
        return True

    def write(self, s):
        return self.buf.write(s)

    def take(self):
        text, self.buf = self.buf.getvalue(), io.StringIO()
        return text


replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
os.dup2(devnull, 2)
OUT, ERR = Sink(), Sink()
sys.stdout, sys.stderr = OUT, ERR


def reply(obj):
    replies.write(json.dumps(obj) + "\n")
    replies.flush()


def watch_parent(parent):
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()

try:
    import runpy

    import psycopg2  # noqa: F401 - the driver env.py's engine loads: import it while nothing waits
    import sqlalchemy  # noqa: F401
    from alembic.config import CommandLine
except BaseException:  # noqa: BLE001
    reply({"ready": False, "error": traceback.format_exc(limit=1)})
    sys.exit(1)
reply({"ready": True})


def run(request):
    if "alembic" in request:
        CommandLine(prog="alembic").main(argv=request["alembic"])
    else:
        script = request["script"]
        sys.argv = [script]
        runpy.run_path(script, run_name="__main__")


def exit_code(e):
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    ERR.write(f"{e.code}\n")
    return 1


def set_environ(values):
    """Sets each variable, or removes it where the value is None."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


for line in sys.stdin:
    request = json.loads(line)
    env = request.get("env", {})
    saved = {k: os.environ.get(k) for k in env}
    code = 0
    try:
        set_environ(env)
        run(request)
    except SystemExit as e:
        code = exit_code(e)
    except BaseException:  # noqa: BLE001 - the reply says what happened; the worker serves the next one
        traceback.print_exc(file=ERR)
        code = 1
    finally:
        set_environ(saved)
        sys.argv = [""]
    reply({"code": code, "stdout": OUT.take(), "stderr": ERR.take()})
