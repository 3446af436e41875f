#!/usr/bin/env python3
"""Reference renderer for Hugging Face chat templates, used by the
differential test of moemesh's C++ Jinja engine (core/jinja).

    python3 tools/chat/render_chat_template.py < cases.json > rendered.json

Input (stdin), a JSON list:  [{"template": "<jinja source>", "context": {...}}, ...]
Output (stdout), same order: [{"ok": true, "text": "..."} or
                              {"ok": false, "error": "..."}, ...]

The environment is set up the way transformers' apply_chat_template sets it
up (chat_template_utils._compile_jinja_template): an
ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the
loopcontrols extension, a {% generation %} block that just renders its body,
the globals raise_exception(message) and strftime_now(format), and a tojson
filter that is json.dumps(ensure_ascii=False, ...). The context is used as
given: nothing (tools=None, add_generation_prompt=False, ...) is filled in.
The template text is used as given too, so Jinja drops one trailing newline.

An error raised by the template's raise_exception() is reported as its bare
message; any other error as "<ExceptionClass>: <message>".
Needs only Debian's python3-jinja2 (apt-get install -y python3-jinja2).
"""
import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class RaisedByTemplate(jinja2.exceptions.TemplateError):
    """What raise_exception() throws (a TemplateError, as in transformers)."""


class GenerationBlock(jinja2.ext.Extension):
    """{% generation %}body{% endgeneration %} renders as body (transformers
    uses it to find the assistant's tokens; the text is unchanged)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def raise_exception(message):
    raise RaisedByTemplate(message)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def make_environment():
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_one(env, case):
    try:
        text = env.from_string(case["template"]).render(**case.get("context", {}))
        return {"ok": True, "text": text}
    except RaisedByTemplate as e:
        return {"ok": False, "error": str(e)}
    except Exception as e:  # syntax errors, undefined, type errors, ...
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}


def main():
    cases = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    env = make_environment()
    results = [render_one(env, case) for case in cases]
    out = json.dumps(results, ensure_ascii=False, indent=1) + "\n"
    sys.stdout.buffer.write(out.encode("utf-8"))


if __name__ == "__main__":
    main()
