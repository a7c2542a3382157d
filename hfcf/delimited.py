"""Read a delimited text table (comma, tab, semicolon, pipe or whitespace; header or none; UTF-8, UTF-8 with BOM or
Latin-1; plain, .gz, .bz2 or a one-file .zip) the way its first lines say, or as the caller says.

`sniff` looks at the first SNIFF_BYTES only, so it costs the same at 25M rows as at 25; `read` then parses the whole
file with pyarrow's CSV reader (pandas' when pyarrow is absent, as in the Space's runtime). A `Reading` is what
both agree on, and what config.json records so the app reads the file again the same way.
"""
import bz2
import codecs
import contextlib
import csv
import gzip
import shlex
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .errors import DataError

SNIFF_BYTES = 1 << 16
SNIFF_LINES = 50
WHITESPACE = "whitespace"
# Tried in this order; the first that splits every sampled line into the same number (>= 2) of fields wins.
SEPARATORS = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", WHITESPACE: "whitespace"}
SEPARATOR_WORDS = {name: mark for mark, name in SEPARATORS.items()} | {"space": WHITESPACE}
ENCODINGS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "latin-1": "Latin-1"}
COMPRESSIONS = (".gz", ".bz2", ".zip")


@dataclass
class Reading:
    """How a text table is read: its separator (a character or "whitespace"), whether its first row is a header, the
    column names to use instead of a header (None: the header's), and its encoding."""

    sep: str
    header: bool
    columns: list | None
    encoding: str

    def describe(self):
        """How the file was read, in words: "whitespace-separated, no header, columns user,item,rating, UTF-8"."""
        header = "a header row" if self.header else "no header"
        columns = f", columns {','.join(self.columns)}" if self.columns else ""
        return f"{SEPARATORS.get(self.sep, repr(self.sep))}-separated, {header}{columns}, {ENCODINGS[self.encoding]}"

    def options(self):
        """The keyword arguments of `hfcf.data.load` that read the file this way again."""
        return asdict(self)


def parse_sep(text):
    """--sep's value as a separator: one character, or tab, comma, semicolon, pipe, space, whitespace."""
    sep = SEPARATOR_WORDS.get(text.lower(), text) if text else text
    if sep != WHITESPACE and len(sep or "") != 1:
        raise DataError(f"--sep takes one character or one of {', '.join(SEPARATOR_WORDS)} (got {text!r}); "
                        "pass e.g. --sep tab or --sep ';'")
    return sep


def sniff(path, sep=None, header=None, columns=None, encoding=None, default_columns=()):
    """The Reading of `path`: what is given, the rest detected from its first lines.

    Without a header or `columns`, the columns are named `default_columns` in order (then column<N>), or numbered from 1
    when `default_columns` is None."""
    sample = _sample(path)
    encoding = encoding or _encoding(sample)
    lines = _lines(sample.decode(encoding, errors="replace"))
    if not lines:
        raise DataError(f"{Path(path).name} is empty; point at a file with ratings in it")
    sep = parse_sep(sep) if sep is not None else _separator(lines) or ","
    rows = [_split(line, sep) for line in lines]
    if header is None:
        header = _has_header(rows)
    width = max((len(row) for row in rows), default=0)
    if columns is not None:
        columns = _column_names(columns, width, path)
    elif not header and default_columns is None:
        columns = [str(number) for number in range(1, width + 1)]
    elif not header:
        columns = [*default_columns, *(f"column{i}" for i in range(len(default_columns) + 1, width + 1))][:width]
    return Reading(sep, bool(header), columns, encoding)


def read(path, reading, string_columns=()):
    """The table at `path` read as `reading` says, `string_columns` kept as text; DataError when it cannot be."""
    try:
        import pyarrow.csv  # noqa: F401  (the train extra has it; the Space's runtime may not)
    except ImportError:
        return _read_with_pandas(path, reading, string_columns)
    if reading.sep == WHITESPACE and not _single_spaced(path, reading):
        return _read_with_pandas(path, reading, string_columns)  # runs of spaces: pyarrow splits on one character
    try:
        return _read_with_pyarrow(path, reading, string_columns)
    except (UnicodeDecodeError, DataError):
        raise  # `_read_with_pyarrow` turns the invalid UTF-8 pyarrow reports into this; the caller retries
    except Exception as error:  # pyarrow's ArrowInvalid and OSError: one fix for all
        if reading.sep == WHITESPACE:  # a run of spaces past the sample: pandas splits on any
            return _read_with_pandas(path, reading, string_columns)
        raise _unreadable(path, reading, error) from error


def _read_with_pyarrow(path, reading, string_columns):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = pacsv.ReadOptions(column_names=reading.columns, skip_rows=1 if reading.header and reading.columns else 0,
                                encoding="utf8" if reading.encoding.startswith("utf-8") else reading.encoding,
                                block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=" " if reading.sep == WHITESPACE else reading.sep)
    # Only an empty cell is missing, as in `_read_with_pandas`: "NA" or "None" is a title or an id like any other.
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in string_columns}, null_values=[""],
                                   strings_can_be_null=True)
    with _binary(path, for_arrow=True) as source:
        try:
            table = pacsv.read_csv(source, read_options=options, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as error:
            if "invalid UTF8" in str(error) or "UTF-8" in str(error):
                raise UnicodeDecodeError("utf-8", b"", 0, 1, str(error)) from error
            raise
    if options.encoding == "utf8" and any(pa.types.is_binary(field.type) for field in table.schema):
        raise UnicodeDecodeError("utf-8", b"", 0, 1, "pyarrow kept a column of invalid UTF-8 as bytes")
    frame = table.to_pandas()
    del table
    pa.default_memory_pool().release_unused()  # the Arrow copy is gone: half a GB at 25M ratings
    return frame


def _read_with_pandas(path, reading, string_columns):
    try:
        return pd.read_csv(path, sep=r"\s+" if reading.sep == WHITESPACE else reading.sep,
                           header=0 if reading.header else None, names=reading.columns,
                           encoding=reading.encoding, dtype={name: str for name in string_columns} or None,
                           keep_default_na=False, na_values=[""])
    except UnicodeDecodeError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise _unreadable(path, reading, error) from error


def _unreadable(path, reading, error):
    return DataError(f"{Path(path).name} could not be read as {reading.describe()} ({error}); "
                     f"check that every line has the same fields, or say how to read it with --sep and "
                     f"--header/--no-header")


def _sample(path):
    """The first SNIFF_BYTES of `path`, decompressed."""
    try:
        with _binary(path) as file:
            return file.read(SNIFF_BYTES)
    except FileNotFoundError as error:
        raise DataError(f"{path} does not exist; check the path") from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{Path(path).name} could not be read ({error}); check the file, or decompress it "
                        "(.gz, .bz2 and a .zip of one file are read directly)") from error


@contextlib.contextmanager
def _binary(path, for_arrow=False):
    """`path` opened for reading its decompressed bytes; pyarrow gets .gz and .bz2 by name (it decompresses them
    natively, faster than Python's modules)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) != 1:
                raise DataError(f"{Path(path).name} holds {len(members)} files; hfcf reads a .zip of exactly one: "
                                "unzip it and pass the ratings file")
            with archive.open(members[0]) as file:
                yield file
    elif for_arrow:
        yield str(path)
    else:
        with {".gz": gzip.open, ".bz2": bz2.open}.get(suffix, open)(path, "rb") as file:
            yield file


def _encoding(sample):
    """utf-8-sig with a byte-order mark, else utf-8 when the sample decodes as that, else latin-1."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _lines(text):
    """The sample's complete, non-blank lines (the last one may be cut), at most SNIFF_LINES."""
    lines = text.splitlines()
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines = lines[:-1]
    return [line for line in lines if line.strip()][:SNIFF_LINES]


def _split(line, sep):
    if sep == WHITESPACE:
        return line.split()
    return next(csv.reader([line], delimiter=sep), [])


def detect_sep(path, encoding):
    """The separator `path`'s first lines show, or None when none of SEPARATORS splits them."""
    return _separator(_lines(_sample(path).decode(encoding, errors="replace")))


def _separator(lines):
    """The first of SEPARATORS that splits every line into the same number (>= 2) of fields; else the one giving the
    most fields on the first line; else None."""
    counts = {sep: {len(_split(line, sep)) for line in lines} for sep in SEPARATORS}
    steady = [sep for sep, widths in counts.items() if len(widths) == 1 and min(widths) >= 2]
    if steady:
        return steady[0]
    widest = max(SEPARATORS, key=lambda sep: len(_split(lines[0], sep)) if lines else 0)
    return widest if lines and len(_split(lines[0], widest)) >= 2 else None


def _has_header(rows):
    """Whether the first row names the columns: some column is numbers below a first row that is not one. A first row
    like the rest is data; with no column of numbers there is nothing to tell by, and a header is assumed."""
    first, rest = rows[0] if rows else [], rows[1:]
    numeric = []
    for position, name in enumerate(first):
        below = [row[position] for row in rest if position < len(row) and row[position].strip()]
        if below and all(map(is_number, below)) and name.strip():
            numeric.append(is_number(name))
    return not numeric or not all(numeric)


def _column_names(columns, width, path):
    """--columns as a list, one name per column; names left out become column<N>."""
    names = [name.strip() for name in (columns.split(",") if isinstance(columns, str) else columns)]
    if len(names) > width or len(set(names)) != len(names) or not all(names):
        raise DataError(f"--columns {','.join(names)} names {len(names)} columns, but {Path(path).name} has {width} "
                        f"and each needs its own name; pass --columns {','.join(_likely_names(width))}")
    return names + [f"column{i}" for i in range(len(names) + 1, width + 1)]


def _likely_names(width):
    return ["user", "item", "rating", "timestamp", *(f"column{i}" for i in range(5, width + 1))][:max(width, 2)]


def _single_spaced(path, reading):
    """Whether the sample's lines are fields joined by one space each, which pyarrow's " " delimiter reads."""
    lines = _lines(_sample(path).decode(reading.encoding, errors="replace"))
    return all(line.split(" ") == line.split() for line in lines)


def is_number(text):
    """Whether `text` reads as a number."""
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def quoted(sep):
    """--sep's value as a shell word."""
    return SEPARATORS[sep] if sep in SEPARATORS else shlex.quote(sep)
