"""No API key, secret, token or password is hard-coded in any file git tracks (or would track).

The seed hard-coded its Roboflow key (`Roboflow(api_key="...")`); keys now come only from the
environment or an untracked `.env` (see `.env.example`). This test scans every file `git ls-files`
lists, plus untracked files that are not ignored (what the next commit could add), and fails
naming each file, line and rule. It looks for:

- a literal assigned to an API-key name (`api_key="..."`, `apiKey: '...'`, `"api_key": "..."`);
- `ROBOFLOW_API_KEY=<value>` (or `: value`) with a non-empty literal value, as in a .env,
  shell, compose or Dockerfile line;
- a random-looking literal (long, letters and digits, high entropy) assigned to a name holding
  secret, token, password, passwd, api/access/private/auth key;
- well-known credential formats (private key blocks, AWS/GitHub/Slack/Google/OpenAI tokens);
- an API key in a URL query (`?api_key=...`).

Allowed: empty values, references (`$VAR`, `${VAR:-}`, `{key}`), placeholders (`<your key>`,
`...`, `xxxx`, `changeme`), environment-variable names (`"ROBOFLOW_API_KEY"`), and fake keys in
tests, which must say so: a value containing `test`, `fake`, `dummy`, `example` or `placeholder`.
The scanner's own checks below build their samples at run time, so this file never matches.
"""

from __future__ import annotations

import math
import re
import secrets
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
MAX_BYTES = 2 * 1024 * 1024  # larger files are data, not configuration or code

_SECRET_WORDS = (
    r"(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|access[_-]?key|private[_-]?key|auth[_-]?key)"
)
# NAME ["']? (= | : | := | =>) VALUE, where NAME is an identifier holding a secret word.
_ASSIGNMENT = re.compile(
    r"(?P<name>[A-Za-z0-9_.-]*" + _SECRET_WORDS + r"[A-Za-z0-9_-]*)[\"']?\]?\s*(?::=|=>|[:=])\s*"
    r"(?:[rRbBuU]?(?P<quote>[\"'])(?P<quoted>[^\"'\n]*)(?P=quote)|(?P<bare>[^\s\"'`#,;)\]}]+))",
    re.IGNORECASE,
)
_API_KEY_NAME = re.compile(r"api[_-]?key|apikey", re.IGNORECASE)
_ROBOFLOW_LINE = re.compile(r"\bROBOFLOW_API_KEY\s*[:=]\s*[\"']?(?P<value>[^\s#\"'`,;)]*)")
_URL_KEY = re.compile(
    r"[?&](?:api[_-]?key|apikey|access_token|token)=(?P<value>[A-Za-z0-9_.~-]{8,})", re.IGNORECASE
)
_KNOWN_FORMATS = {
    "private key block": re.compile(
        r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY( BLOCK)?-----"
    ),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "OpenAI-style key": re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}\b"),
}
_PLACEHOLDER = re.compile(
    r"^(?:<[^>]*>|\.{3,}|…|x{4,}|X{4,}|\*{3,}|changeme|change-me|none|null|nil|redacted|secret|password|"
    r"your[-_ ].*|.*(?:test|fake|dummy|example|placeholder|sample).*)$",
    re.IGNORECASE,
)
_REFERENCE = re.compile(r"^(?:\$|%\(|\{|<|`|@|env\b|os\.|getenv|None$|null$|true$|false$)", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")  # a variable's name, not its value
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_.+/=~-]+$")


def entropy(text: str) -> float:
    """Shannon entropy of `text`, in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def random_looking(value: str) -> bool:
    """A long token of mixed letters and digits that no human would write as a word or a name."""
    return (
        len(value) >= 16
        and bool(_TOKEN_CHARS.match(value))
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and entropy(value) >= 3.3
    )


def harmless(value: str) -> bool:
    """Empty, a reference to something else, a placeholder, or a variable's name."""
    value = value.strip()
    return (
        not value
        or bool(_REFERENCE.match(value))
        or bool(_PLACEHOLDER.match(value))
        or bool(_ENV_NAME.match(value))
    )


def findings(text: str) -> list[tuple[int, str]]:
    """(line number, rule) of every suspected hard-coded secret in `text`."""
    found: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        rules: list[str] = []
        for match in _ASSIGNMENT.finditer(line):
            quoted = match.group("quoted")
            value = quoted if quoted is not None else match.group("bare")
            if harmless(value):
                continue
            if _API_KEY_NAME.search(match.group("name")) and quoted is not None and len(value) >= 8:
                rules.append(f"literal assigned to {match.group('name')}")
            elif random_looking(value):
                rules.append(f"random-looking literal assigned to {match.group('name')}")
        for match in _ROBOFLOW_LINE.finditer(line):
            if not harmless(match.group("value")):
                rules.append("ROBOFLOW_API_KEY set to a literal")
        for match in _URL_KEY.finditer(line):
            if not harmless(match.group("value")):
                rules.append("key in a URL query")
        rules += [rule for rule, pattern in _KNOWN_FORMATS.items() if pattern.search(line)]
        found += [(number, rule) for rule in dict.fromkeys(rules)]
    return found


def candidate_files() -> list[Path]:
    """Files git tracks, plus untracked files that are not ignored (the next commit's candidates)."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = sorted({name for name in listing.decode().split("\0") if name})
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def test_no_hard_coded_secrets_in_the_repository() -> None:
    files = candidate_files()
    assert any(path.name == "pyproject.toml" for path in files), "git listed no project files"
    problems: list[str] = []
    for path in files:
        if path.stat().st_size > MAX_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (images, models)
        text = data.decode("utf-8", errors="replace")
        relative = path.relative_to(ROOT)
        problems += [f"{relative}:{number}: {rule}" for number, rule in findings(text)]
    assert not problems, (
        "hard-coded secrets (take them from the environment or an untracked .env; fake keys in "
        "tests must contain 'test', 'fake' or 'dummy'):\n" + "\n".join(problems)
    )


def test_env_example_documents_the_key_without_a_value() -> None:
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^ROBOFLOW_API_KEY=$", example, re.MULTILINE)
    assert findings(example) == []
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be ignored by git"


# The scanner itself: samples are built at run time (a fresh random key each run).


def _key(length: int = 20) -> str:
    while True:  # a real-looking Roboflow-style key: letters and digits
        key = secrets.token_urlsafe(length)[:length].replace("-", "a").replace("_", "b")
        if any(c.isdigit() for c in key) and any(c.isalpha() for c in key):
            return key


@pytest.mark.parametrize(
    "template",
    [
        'rf = Roboflow({name}="{key}")',
        "{name} = '{key}'",
        '    "{name}": "{key}",',
        "const apiKey = '{key}';",
        "ROBOFLOW_{NAME}={key}",
        'export ROBOFLOW_{NAME}="{key}"',
        "      ROBOFLOW_{NAME}: {key}",
        "ENV ROBOFLOW_{NAME}={key}",
        "client_secret = '{key}{key}'",
        "DB_PASSWORD: {key}",
        'github_token = "{key}"',
        "url = f'https://detect.roboflow.com/faces/3?{name}={key}&confidence=50'",
    ],
)
def test_scanner_flags_hard_coded_keys(template: str) -> None:
    line = template.format(name="api" + "_key", NAME="API" + "_KEY", key=_key())
    assert findings("x = 1\n" + line + "\n"), line


@pytest.mark.parametrize(
    "line",
    [
        "ROBOFLOW_API_KEY=",
        "ROBOFLOW_API_KEY=<your Roboflow API key>",
        "export ROBOFLOW_API_KEY=...",
        "shell (`export ROBOFLOW_API_KEY=...` before `docker compose up`)",
        "      ROBOFLOW_API_KEY: ${ROBOFLOW_API_KEY:-}",
        '  ROBOFLOW_API_KEY: "$ROBOFLOW_API_KEY"',
        'ROBOFLOW_API_KEY_ENV = "ROBOFLOW_API_KEY"',
        'api_key = os.environ["ROBOFLOW_API_KEY"]',
        "self._key = api_key if api_key is not None else api_key_from_env()",
        'query = urllib.parse.urlencode({"api_key": self._key, "confidence": percent})',
        'url = f"{api_url}/{model}/{version}?api_key={key}&confidence=50"',
        'KEY = "rf-TEST-key-8c1f2e0a9d"  # a fake key in a test',
        'api_key = "dummy-key-for-tests"',
        'sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"',
        'token_pattern = "[A-Za-z0-9]+"',
        "max_tokens = 4096",
        'password_help = "the password of the Redis server, if it has one"',
    ],
)
def test_scanner_leaves_placeholders_and_references_alone(line: str) -> None:
    assert findings(line) == [], line
