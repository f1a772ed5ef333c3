#!/usr/bin/python3
"""Extract the six Python examples from the specification, or check them.

    extract.py SPEC --check   the .py files here must equal the spec's code
    extract.py SPEC --write   (re)write them from the spec

SPEC is transports-and-protocols.txt. Each example is the code block of one
subsection of its "Examples" section: the lines indented by three spaces
after the prose, up to the next line indented less ("See also:", the next
title), dedented by three spaces, trailing blank lines dropped. The files
must not be edited by hand: run.py runs them as they are.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# subsection title in the spec -> file name here
EXAMPLES = {
    "TCP Echo Server": "tcp_echo_server.py",
    "TCP Echo Client": "tcp_echo_client.py",
    "UDP Echo Server": "udp_echo_server.py",
    "UDP Echo Client": "udp_echo_client.py",
    "Connecting Existing Sockets": "socketpair.py",
    "loop.subprocess_exec() and SubprocessProtocol": "subprocess_date.py",
}
INDENT = "   "


def extract(spec_text):
    lines = spec_text.splitlines()
    try:
        start = next(i for i in range(len(lines) - 1)
                     if lines[i] == "Examples" and set(lines[i + 1]) == {"="})
    except StopIteration:
        raise SystemExit("extract.py: no 'Examples' section in the spec")
    # subsections: a title line followed by a line of dashes
    titles = [i for i in range(start + 2, len(lines) - 1)
              if lines[i] and set(lines[i + 1]) == {"-"}
              and len(lines[i + 1]) == len(lines[i])]
    code = {}
    for n, t in enumerate(titles):
        end = titles[n + 1] if n + 1 < len(titles) else len(lines)
        body = lines[t + 2:end]
        first = next((i for i, l in enumerate(body) if l.startswith(INDENT)
                      and not l.startswith(INDENT + " ")), None)
        if first is None:
            continue
        block = []
        for l in body[first:]:
            if l.strip() and not l.startswith(INDENT):
                break
            block.append(l[len(INDENT):] if l.strip() else "")
        while block and not block[-1]:
            block.pop()
        code[lines[t]] = "\n".join(block) + "\n"
    missing = [t for t in EXAMPLES if t not in code]
    if missing:
        raise SystemExit("extract.py: no code for %s in the spec" % missing)
    return {EXAMPLES[t]: code[t] for t in EXAMPLES}


def main(argv):
    if len(argv) != 3 or argv[2] not in ("--check", "--write"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        files = extract(f.read())
    bad = 0
    for name, text in files.items():
        path = os.path.join(HERE, name)
        if argv[2] == "--write":
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            continue
        try:
            with open(path, encoding="utf-8", newline="") as f:
                have = f.read()
        except OSError as e:
            print("%s: %s" % (name, e.strerror), file=sys.stderr)
            bad = 1
            continue
        if have != text:
            import difflib
            sys.stderr.writelines(difflib.unified_diff(
                text.splitlines(True), have.splitlines(True),
                "spec: " + name, name))
            print("%s differs from the specification's example" % name,
                  file=sys.stderr)
            bad = 1
    return bad


if __name__ == "__main__":
    sys.exit(main(sys.argv))
