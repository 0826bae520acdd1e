"""Input files -> checkpointable sources of RawEvents.

A source is one readable stream of events: an EVTX file, an XML or JSON file, or one member of a .zip/.tar.gz
archive (members are read in-stream, never extracted to disk). Each event comes with a *position*, a number that only
grows within the source, so reading can resume after the last delivered one:

* plain JSON-lines files: the byte offset just after the line (reading seeks straight there);
* everything else (EVTX files, XML files, JSON arrays, archive members): the 1-based ordinal of the record in
  file order. For EVTX this is deliberately not the EventRecordID: a log that has wrapped around stores its
  chunks out of record-id order (the corpus file ``sample_with_a_bad_chunk_magic.evtx`` goes 46728..47640 then
  back to 45xxx), so "skip ids at or below the checkpoint" would lose the older half after a restart.

Records that cannot be read are handed to ``on_issue(reason, raw)`` and reading goes on.
"""

from __future__ import annotations

import io
import logging
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import evtx
import orjson

from producers.adapters import event_xml
from producers.adapters.event_xml import EventXmlError, iter_event_xml, parse_event_xml_fast
from producers.adapters.json_formats import RecordFormatError, map_json_record
from producers.encoded import EncodedChunk, provenance_avro
from producers.timeutil import TimeFormatError, iso_to_ticks, now_us
from schemas.codec import EncodeError

FORMATS = ("auto", "evtx", "xml", "winlogbeat", "nxlog", "otrf", "sentinel-export")
JSON_FORMATS = ("winlogbeat", "nxlog", "otrf", "sentinel-export")
EVTX_MAGIC = b"ElfFile\x00"
_ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
_INPUT_SUFFIXES = (".evtx", ".xml", ".json", ".jsonl", ".ndjson", ".log", *_ARCHIVE_SUFFIXES)

# Worker threads of the Rust EVTX parser; 0 lets it use every core (benchmarks set 1 to measure one core).
EVTX_THREADS = 0

log = logging.getLogger(__name__)

IssueHandler = Callable[[str, bytes | None], None]
Positioned = Iterator[tuple[dict[str, Any], int]]
PositionedChunks = Iterator[tuple[EncodedChunk, int]]


class SourceError(ValueError):
    """An input that cannot be opened at all (missing, unknown format, unreadable archive)."""


# What reading a damaged file or archive can raise; reported as an issue, the records before it are kept.
READ_ERRORS = (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, SourceError)


@dataclass
class Source:
    """One checkpointable stream of events. ``key`` names it in the checkpoint file."""

    key: str
    fmt: str  # evtx | xml | json | jsonl, with the JSON dialect in ``dialect``
    path: Path
    member: str | None = None
    dialect: str = "auto"
    position_kind: str = "ordinal"
    issues: list[str] = field(default_factory=list)

    def read(self, resume: int | None, agent_id: str = "", on_issue: IssueHandler | None = None,
             follow: bool = False) -> Positioned:
        """Events after ``resume``. With ``follow``, a last line without its newline is left for later."""
        issue = self._issue_reporter(on_issue)
        try:
            yield from self._read(resume, agent_id, issue, follow)
        except READ_ERRORS as exc:
            issue(f"reading stopped: {exc.__class__.__name__}: {exc}")

    @property
    def reads_encoded(self) -> bool:
        """Whether ``read_encoded`` can read this source (EVTX files)."""
        return self.fmt == "evtx"

    def read_encoded(self, resume: int | None, agent_id: str = "", on_issue: IssueHandler | None = None,
                     chunk_records: int = 1000) -> PositionedChunks:
        """``read`` of an EVTX source, a chunk of up to ``chunk_records`` events at a time, already in Avro (needs
        ``producers.encoded.available()``); the position is the last event's."""
        issue = self._issue_reporter(on_issue)
        try:
            yield from _read_evtx_encoded(self._open_evtx(), self._provenance(agent_id), resume, issue,
                                          chunk_records)
        except READ_ERRORS as exc:
            issue(f"reading stopped: {exc.__class__.__name__}: {exc}")

    def _issue_reporter(self, on_issue: IssueHandler | None) -> Callable[..., None]:
        def issue(reason: str, raw: bytes | None = None) -> None:
            self.issues.append(reason)
            if on_issue is not None:
                on_issue(f"{self.key}: {reason}", raw)

        return issue

    def _provenance(self, agent_id: str) -> dict[str, Any]:
        return {
            "source_format": self.dialect if self.fmt in ("json", "jsonl") else self.fmt,
            "agent_id": agent_id,
            "collector_id": None,
            "read_time_us": now_us(),
            "source_ref": self.key,
        }

    def _read(self, resume: int | None, agent_id: str, issue: Callable[[str, bytes | None], None],
              follow: bool) -> Positioned:
        provenance = self._provenance(agent_id)
        if self.fmt == "evtx":
            yield from _read_evtx(self._open_evtx(), provenance, resume, issue)
        elif self.member is None and self.fmt == "jsonl":
            yield from _read_jsonl_file(self.path, provenance, self.dialect, resume or 0, issue, follow)
        else:
            with self._open() as stream:
                if self.fmt == "xml":
                    events: Iterator[dict[str, Any]] = _read_xml(stream, provenance, issue)
                elif self.fmt == "json":
                    events = _read_json_document(stream.read(), provenance, self.dialect, issue)
                else:
                    events = _read_jsonl_stream(stream, provenance, self.dialect, issue)
                for ordinal, event in enumerate(events, 1):
                    if resume is None or ordinal > resume:
                        yield event, ordinal

    def _open(self) -> IO[bytes]:
        if self.member is None:
            return open(self.path, "rb")
        return _open_member(self.path, self.member)

    def _open_evtx(self) -> Any:
        if self.member is None:
            return str(self.path)
        with _open_member(self.path, self.member) as stream:
            return io.BytesIO(stream.read())


# ---------------------------------------------------------------- discovery

def discover(paths: Sequence[str | Path], fmt: str = "auto") -> list[Source]:
    """Files, folders (recursively) and archive members, in a stable order."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    sources: list[Source] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_INPUT_SUFFIXES))
        elif path.is_file():
            files = [path]
        else:
            raise SourceError(f"{path}: no such file or folder")
        for file in files:
            sources.extend(_sources_of_file(file, fmt))
    return sources


def _sources_of_file(path: Path, fmt: str) -> list[Source]:
    name = path.name.lower()
    if name.endswith(".zip") or (zipfile.is_zipfile(path) and not name.endswith(".evtx")):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m.filename for m in archive.infolist() if not m.is_dir() and _is_data(m.filename)]
        except zipfile.BadZipFile as exc:
            raise SourceError(f"{path}: unreadable zip archive ({exc})") from None
        return [_classify(path, member, _head_of_member(path, member), fmt) for member in members]
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        tar_members: list[str] = []
        try:
            with tarfile.open(path, "r:*") as archive:
                for info in archive:  # lazily: a truncated archive still yields the tar_members before the damage
                    if info.isfile() and _is_data(info.name):
                        tar_members.append(info.name)
        except READ_ERRORS as exc:
            if not tar_members:
                raise SourceError(f"{path}: unreadable tar archive ({exc})") from None
            log.warning("%s: archive damaged after %d members (%s); reading what is there",
                        path, len(tar_members), exc)
        return [_classify(path, member, _head_of_member(path, member), fmt) for member in tar_members]
    with open(path, "rb") as f:
        head = f.read(4096)
    return [_classify(path, None, head, fmt)]


def _is_data(member: str) -> bool:
    """Archive members that hold data, not macOS resource forks (``__MACOSX/``, ``._name``)."""
    return not (member.startswith("__MACOSX/") or member.rpartition("/")[2].startswith("._"))


def _classify(path: Path, member: str | None, head: bytes, fmt: str) -> Source:
    key = f"{path.resolve()}!{member}" if member else str(path.resolve())
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if fmt == "evtx" or (fmt == "auto" and head.startswith(EVTX_MAGIC)):
        return Source(key, "evtx", path, member)
    if fmt == "xml" or (fmt == "auto" and first == b"<"):
        return Source(key, "xml", path, member)
    dialect = fmt if fmt in JSON_FORMATS else "auto"
    if first == b"[":
        return Source(key, "json", path, member, dialect=dialect)
    if first == b"{" or fmt in JSON_FORMATS:
        kind = "offset" if member is None else "ordinal"
        return Source(key, "jsonl", path, member, dialect=dialect, position_kind=kind)
    raise SourceError(f"{key}: cannot tell the format (not EVTX, XML or JSON); pass --format")


def _open_member(path: Path, member: str) -> IO[bytes]:
    if path.name.lower().endswith(".zip") or zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        stream = archive.open(member)
        return cast(IO[bytes], _Closing(stream, archive))
    tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by _Closing with the member stream
    # Found by walking the archive rather than by name: a lookup by name indexes the whole archive first, which
    # fails on a truncated one even for the members before the damage.
    extracted = next((tar.extractfile(info) for info in tar if info.name == member), None)
    if extracted is None:
        tar.close()
        raise SourceError(f"{path}!{member}: not a regular file")
    return cast(IO[bytes], _Closing(extracted, tar))


def _head_of_member(path: Path, member: str) -> bytes:
    with _open_member(path, member) as stream:
        return stream.read(4096)


class _Closing(io.BufferedIOBase):
    """A member stream that also closes its archive."""

    def __init__(self, stream: IO[bytes], owner: Any) -> None:
        super().__init__()
        self._stream, self._owner = stream, owner

    def read(self, size: int | None = -1) -> bytes:
        return self._stream.read(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._stream.readline(-1 if size is None else size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._owner.close()
            super().close()


# ---------------------------------------------------------------- readers

def _evtx_ticks(timestamp: str) -> int | None:
    try:
        return iso_to_ticks(timestamp.removesuffix(" UTC"))
    except TimeFormatError:
        return None


def _open_evtx_parser(target: Any, issue: Callable[[str, bytes | None], None]) -> Any:
    try:
        return evtx.PyEvtxParser(target, number_of_threads=EVTX_THREADS, skip_errors=True)
    except (RuntimeError, OSError) as exc:
        issue(f"cannot open EVTX: {exc}", None)
        return None


def _evtx_event(record: dict[str, Any], provenance: dict[str, Any], from_record: Any,
                issue: Callable[[str, bytes | None], None]) -> dict[str, Any] | None:
    """One parser record -> RawEvent dict (None: unreadable, reported)."""
    if from_record is not None:
        native_event: dict[str, Any] | None = from_record(record, provenance)
        if native_event is not None:
            return native_event
    record_id = record["event_record_id"]
    header_time = _evtx_ticks(record["timestamp"])
    try:
        event = parse_event_xml_fast(record["data"], provenance, header_time)
    except EventXmlError as exc:
        issue(f"record {record_id}: {exc}", record["data"].encode("utf-8", "replace"))
        return None
    # The XML rendering rounds SystemTime to microseconds; the record header keeps all 7 digits when it is the
    # same instant (it usually is), so take the digit back from there.
    if header_time is not None and header_time // 10 == event["time_created"] // 10:
        event["time_created"] = header_time
    if event["event_record_id"] is None:
        event["event_record_id"] = record_id
    return event


def _report_new(caught: list[Any], seen: int, ordinal: int, resume: int | None,
                issue: Callable[[str, bytes | None], None]) -> int:
    """Report the parser's warnings after ``seen``; returns how many there are now. A damage found before the
    resume point was already reported by the run that read past it."""
    if len(caught) != seen and (resume is None or ordinal > resume):
        for w in caught[seen:]:
            issue(str(w.message), None)
    return len(caught)


@contextmanager
def _parser_records(target: Any, issue: Callable[[str, bytes | None], None]
                    ) -> Iterator[tuple[Iterator[Any] | None, list[Any]]]:
    """The parser's records (None when the file cannot be opened) and the list its warnings go to."""
    parser = _open_evtx_parser(target, issue)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        yield (None if parser is None else parser.records()), caught


def _read_evtx(target: Any, provenance: dict[str, Any], resume: int | None,
               issue: Callable[[str, bytes | None], None]) -> Positioned:
    """EVTX records through the Rust parser; damaged chunks are skipped and reported, readable records kept."""
    from_record = event_xml.native_from_record
    with _parser_records(target, issue) as (records, caught):
        if records is None:
            return
        seen = 0
        ordinal = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except RuntimeError as exc:  # an error the parser could not skip: the rest is unreadable
                issue(f"EVTX parse stopped: {exc}", None)
                break
            finally:
                seen = _report_new(caught, seen, ordinal, resume, issue)
            if record is None:
                continue
            ordinal += 1
            if resume is not None and ordinal <= resume:
                continue
            event = _evtx_event(record, provenance, from_record, issue)
            if event is not None:
                yield event, ordinal


def _read_evtx_encoded(target: Any, provenance: dict[str, Any], resume: int | None,
                       issue: Callable[[str, bytes | None], None], chunk_records: int) -> PositionedChunks:
    """``_read_evtx`` a chunk at a time, the events already in Avro (``producers._evtxrender.encode_records``):
    the same events, positions and reported issues. The records the C code declines, and the one that comes
    with a parser warning, are read one by one as in ``_read_evtx`` and join the chunks encoded by the codec."""
    native = event_xml._native
    from_record = event_xml.native_from_record
    encoded_provenance = provenance_avro(provenance)
    with _parser_records(target, issue) as (records, caught):
        if records is None:
            return
        seen = ordinal = 0  # warnings reported so far; records taken so far (the last one's ordinal)
        while True:
            skip = resume - ordinal if resume is not None and resume > ordinal else 0
            stop, taken, data, ends, runs, pending = native.encode_records(
                records, caught, encoded_provenance, chunk_records, skip)
            ordinal += taken
            if ends:
                yield EncodedChunk(data, memoryview(ends).cast("I"), runs), ordinal
            if stop == native.STOP_ERROR:  # reported in _read_evtx's order: the error, then the warnings
                if isinstance(pending, RuntimeError):  # an error the parser could not skip: the rest is unreadable
                    issue(f"EVTX parse stopped: {pending}", None)
                _report_new(caught, seen, ordinal, resume, issue)
                if isinstance(pending, RuntimeError):
                    break
                raise pending
            seen = _report_new(caught, seen, ordinal, resume, issue)
            if stop == native.STOP_END:
                break
            if stop == native.STOP_RECORD and pending is not None:
                ordinal += 1
                if resume is not None and ordinal <= resume:
                    continue
                event = _evtx_event(pending, provenance, from_record, issue)
                if event is None:
                    continue
                try:
                    chunk = EncodedChunk.of_event(event)
                except EncodeError as exc:
                    issue(f"record {event['event_record_id']}: does not fit the RawEvent schema ({exc})",
                          pending["data"].encode("utf-8", "replace"))
                    continue
                yield chunk, ordinal


def _read_xml(stream: IO[bytes], provenance: dict[str, Any],
              issue: Callable[[str, bytes | None], None]) -> Iterator[dict[str, Any]]:
    try:
        yield from iter_event_xml(stream, provenance, on_error=lambda reason: issue(reason, None))
    except EventXmlError as exc:
        issue(str(exc), None)


def _map(line: bytes, provenance: dict[str, Any], dialect: str,
         issue: Callable[[str, bytes | None], None]) -> dict[str, Any] | None:
    try:
        return map_json_record(orjson.loads(line), provenance, dialect)
    except orjson.JSONDecodeError as exc:
        issue(f"malformed JSON: {exc}", line)
    except RecordFormatError as exc:
        issue(str(exc), line)
    return None


def _read_jsonl_stream(stream: IO[bytes], provenance: dict[str, Any], dialect: str,
                       issue: Callable[[str, bytes | None], None]) -> Iterator[dict[str, Any]]:
    for line in stream:
        if line.strip():
            event = _map(line, provenance, dialect, issue)
            if event is not None:
                yield event


def _read_jsonl_file(path: Path, provenance: dict[str, Any], dialect: str, offset: int,
                     issue: Callable[[str, bytes | None], None], follow: bool) -> Positioned:
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            line = f.readline()
            if not line or (follow and not line.endswith(b"\n")):
                return  # in follow mode an unterminated last line may still be being written
            offset += len(line)
            if line.strip():
                event = _map(line, provenance, dialect, issue)
                if event is not None:
                    yield event, offset


def _read_json_document(data: bytes, provenance: dict[str, Any], dialect: str,
                        issue: Callable[[str, bytes | None], None]) -> Iterator[dict[str, Any]]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        issue(f"malformed JSON document: {exc}", None)
        return
    for record in document if isinstance(document, list) else [document]:
        try:
            yield map_json_record(record, provenance, dialect)
        except RecordFormatError as exc:
            issue(str(exc), orjson.dumps(record))
