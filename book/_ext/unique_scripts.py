"""Sphinx extension: each page declares each inline script once.

Jupyter Book 1 (Sphinx 7.4) writes the inline scripts that extensions add after the builder starts
(sphinx-thebe's ``const THEBE_JS_URL = …`` and sphinx-togglebutton's selector) twice into every
page; the second ``const`` declaration is a SyntaxError in the browser console. This
drops the repeats from each page's script list, keeping the first of each (same file or same inline
text, same attributes).
"""

from __future__ import annotations


def _key(script) -> tuple:
    # an inline script is registered with the file name None, then added again as '' (Sphinx 7.4's
    # HTML builder, prepare_writing), so the builder's own duplicate check misses it
    return (script.filename or "", tuple(sorted((k, str(v)) for k, v in script.attributes.items())))


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique      # in place: the builder's own list, which later handlers may still extend


def setup(app):
    # early: Sphinx stops calling html-page-context handlers at the first that returns a template name
    app.connect("html-page-context", drop_repeated_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
