"""Pseudonyms, the key that makes them, and label columns that must not reach an output.

What melanet promises (docs/architecture.md "Ingest"; the HIPAA Safe Harbor list and DICOM
PS3.15 basic de-identification are the yardstick):

- ``patient_id`` and ``sop_instance_uid`` are keyed pseudonyms (HMAC-SHA256 of
  the raw value): stable for one key, not reversible without it. Patient IDs
  come from a small space (``IP_nnnnnnn`` is enumerated in seconds), so the key
  is the whole protection and must not sit beside the data it protects.
- The key is looked up in this order (:func:`load_key`):

  1. ``$MELANET_PSEUDONYM_KEY``: the key itself (e.g. from a secret store);
  2. ``$MELANET_PSEUDONYM_KEY_FILE``: a file holding it;
  3. ``DATA_DIR/.pseudonym_key``, only when an older melanet left one there
     (read, never written; a warning says to move it out);
  4. the user's key file ``$XDG_CONFIG_HOME/melanet/pseudonym_key`` (default
     ``~/.config/melanet/pseudonym_key``), made on first use with mode 0600.

  A key file readable by group or others is set back to 0600, with a warning.
  Nothing here ever writes a key into a data folder.
- Label-table columns whose names look like direct identifiers (names, MRN,
  birth date, SSN, address, phone, e-mail, accession number, UIDs...) are
  dropped with a warning unless the user keeps them by name (``keep_columns``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from melanet.console import console
from melanet.errors import InputDataError

LEGACY_KEY_FILE = ".pseudonym_key"
KEY_ENV = "MELANET_PSEUDONYM_KEY"
KEY_FILE_ENV = "MELANET_PSEUDONYM_KEY_FILE"

# A DICOM UID: digit groups separated by dots, at most 64 characters (PS3.5 9.1).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def pseudonymise(raw: str, key: bytes) -> str:
    """Keyed hash (HMAC-SHA256) of a patient identifier: ``pt_`` + 16 hex digits."""
    return "pt_" + hmac.new(key, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def pseudonymise_uid(uid: str | None, key: bytes) -> str | None:
    """Keyed pseudonym of a DICOM UID (``uid_`` + 24 hex digits); None stays None.

    The same UID gives the same pseudonym under one key, so a labels table keyed
    by SOPInstanceUID is matched by pseudonymising its keys the same way.
    """
    if uid is None or str(uid).strip() == "":
        return None
    digest = hmac.new(key, f"uid:{str(uid).strip()}".encode("utf-8"), hashlib.sha256).hexdigest()
    return "uid_" + digest[:24]


def looks_like_uid(value: str) -> bool:
    """True for a string shaped like a DICOM UID (``1.2.840.…``)."""
    text = str(value).strip()
    return len(text) <= 64 and bool(_UID.match(text))


def key_id(key: bytes) -> str:
    """A short fingerprint of the key: cache entries made with another key are not reused."""
    return hashlib.sha256(b"melanet-key-id:" + key).hexdigest()[:12]


# --------------------------------------------------------------------------- the key

def user_key_path() -> Path:
    """``$XDG_CONFIG_HOME/melanet/pseudonym_key`` (``~/.config/melanet/pseudonym_key`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "melanet" / "pseudonym_key"


def load_key(data_dir: Path | None = None, create: bool = True) -> bytes | None:
    """The pseudonymisation key (see the module notes for where it is looked up).

    ``create`` makes the user's key file when no key exists anywhere; with
    ``create=False`` the answer is then None. ``data_dir`` is only read.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    file_env = os.environ.get(KEY_FILE_ENV)
    if file_env:
        path = Path(file_env).expanduser()
        if not path.is_file():
            raise InputDataError(f"${KEY_FILE_ENV} names {path}, which does not exist; create it (e.g. "
                                 f"`python -c 'import secrets; print(secrets.token_hex(32))' > {path}; "
                                 f"chmod 600 {path}`) or unset the variable")
        return _read_key_file(path)
    if data_dir is not None and (Path(data_dir) / LEGACY_KEY_FILE).is_file():
        legacy = Path(data_dir) / LEGACY_KEY_FILE
        console.print(f"[yellow]warning:[/] the pseudonym key {legacy} sits beside the data it protects; move it "
                      f"out (`mv {legacy} {user_key_path()}`, or set ${KEY_FILE_ENV})", highlight=False)
        return _read_key_file(legacy)
    path = user_key_path()
    if path.is_file():
        return _read_key_file(path)
    if not create:
        return None
    return _create_key_file(path)


def _create_key_file(path: Path) -> bytes:
    """A new random key in ``path`` (mode 0600 from the start; another process's key wins a race)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    console.print(f"made a new pseudonym key: {path} (keep it: the same key gives the same pseudonyms)",
                  highlight=False)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o600)
            done = "set to 0600"
        except OSError:
            done = f"run `chmod 600 {path}`"
        console.print(f"[yellow]warning:[/] pseudonym key {path} was readable by others (mode {mode:04o}); {done}",
                      highlight=False)
    key = path.read_text().strip().encode()
    if not key:
        raise InputDataError(f"pseudonym key file {path} is empty; delete it to make a new key, or restore it")
    return key


# --------------------------------------------------------------------------- identifier columns

# Column-name words that name a direct identifier on their own.
_ID_WORDS = {"mrn", "ssn", "dob", "email", "mail", "phone", "telephone", "mobile", "fax", "address", "street",
             "zip", "zipcode", "postcode", "postal", "accession", "birth", "birthdate", "birthday", "surname",
             "firstname", "lastname", "fullname", "givenname", "familyname", "patientname", "uid", "nhs",
             "insurance", "passport", "license", "licence", "url"}
# Words that, with "name", make a person's name (``image_name`` or ``site_name`` are not).
_PERSON_WORDS = {"patient", "first", "last", "given", "family", "full", "sur", "middle", "maiden", "physician",
                 "doctor", "referring", "performing", "operator", "person", "mother", "father", "pt"}


def column_words(name: str) -> list[str]:
    """``PatientBirthDate`` / ``patient_birth_date`` -> ``["patient", "birth", "date"]``."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name))
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def looks_like_identifier(name: str) -> bool:
    """True when a column name looks like a direct identifier (see the module notes)."""
    words = column_words(name)
    if not words:
        return False
    if any(w in _ID_WORDS or w.endswith("uid") for w in words):
        return True
    if words == ["name"] or ("name" in words and set(words) - {"name"} <= _PERSON_WORDS):
        return True
    if set(words) in ({"patient", "id"}, {"medical", "record"}, {"medical", "record", "number"},
                      {"record", "number"}, {"social", "security"}, {"social", "security", "number"}):
        return True
    return False


def identifier_columns(columns: Iterable[str], keep: Iterable[str] = (), protected: Iterable[str] = ()) -> list[str]:
    """Columns to drop: those that look like identifiers, less ``keep`` and ``protected`` (key, target)."""
    spared = {str(c) for c in keep} | {str(c) for c in protected}
    return [c for c in columns if str(c) not in spared and looks_like_identifier(str(c))]
