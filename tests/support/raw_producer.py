"""A Kafka producer over librdkafka's C API, for records confluent-kafka's Python Producer cannot make.

``Producer.produce(headers=...)`` takes each header key as ``str`` and sends its UTF-8, so a header key that
is not UTF-8 cannot be produced through it, although Kafka allows one (a key is bytes on the wire, and other
clients write such keys). This producer calls the librdkafka that confluent-kafka ships, through ctypes
(``rd_kafka_produceva``), where a header name is any NUL-terminated bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import confluent_kafka

# rd_kafka_vtype_t (librdkafka's rdkafka.h)
_TOPIC, _PARTITION, _VALUE, _KEY, _MSGFLAGS, _TIMESTAMP, _HEADER = 1, 3, 4, 5, 7, 8, 9
_MSG_F_COPY = 0x2  # librdkafka copies the payload and key before produceva returns
_PRODUCER = 0


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Union(ctypes.Union):
    _fields_ = [
        ("cstr", ctypes.c_char_p),
        ("i", ctypes.c_int),
        ("i32", ctypes.c_int32),
        ("i64", ctypes.c_int64),
        ("mem", _Mem),
        ("header", _Header),
        ("pad", ctypes.c_char * 64),
    ]


class _Vu(ctypes.Structure):
    """rd_kafka_vu_t: one typed argument of rd_kafka_produceva."""

    _fields_ = [("vtype", ctypes.c_int), ("u", _Union)]


def _library() -> ctypes.CDLL:
    """The librdkafka confluent-kafka's wheel bundles, else the system's."""
    bundled = sorted((Path(confluent_kafka.__file__).parents[1] / "confluent_kafka.libs").glob("librdkafka*.so*"))
    path = str(bundled[0]) if bundled else ctypes.util.find_library("rdkafka")
    assert path, "librdkafka not found"
    lib = ctypes.CDLL(path)
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Vu), ctypes.c_size_t]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_error_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_outq_len.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


class RawProducer:
    """An idempotent librdkafka producer; use as a context manager. Delivery is checked by ``flush()`` only
    (nothing left queued); callers compare the topic's watermarks with what they produced."""

    def __init__(self, bootstrap: str) -> None:
        self._lib = _library()
        error = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        for name, value in (("bootstrap.servers", bootstrap), ("enable.idempotence", "true")):
            if self._lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), error, len(error)) != 0:
                raise RuntimeError(f"librdkafka refused {name}={value}: {error.value.decode()}")
        self._rk = self._lib.rd_kafka_new(_PRODUCER, conf, error, len(error))
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {error.value.decode()}")

    def produce(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[bytes, bytes | None]],
        timestamp_ms: int | None,
    ) -> None:
        """Queue one record; a header name must not hold NUL. ``timestamp_ms`` None: the producer's clock."""
        keep: list[ctypes.Array[ctypes.c_char]] = []  # buffers that must outlive the call

        def mem(data: bytes) -> int:
            buffer = ctypes.create_string_buffer(data, len(data))
            keep.append(buffer)
            return ctypes.addressof(buffer)

        args: list[_Vu] = []

        def arg(vtype: int, **fields: object) -> _Vu:
            vu = _Vu(vtype=vtype)
            args.append(vu)
            for name, field_value in fields.items():
                setattr(vu.u, name, field_value)
            return vu

        arg(_TOPIC, cstr=topic.encode())
        arg(_PARTITION, i32=partition)
        arg(_MSGFLAGS, i=_MSG_F_COPY)
        if value is not None:
            arg(_VALUE, mem=_Mem(mem(value), len(value)))
        if key is not None:
            arg(_KEY, mem=_Mem(mem(key), len(key)))
        if timestamp_ms is not None:
            arg(_TIMESTAMP, i64=timestamp_ms)
        for name, header_value in headers:
            assert b"\x00" not in name, "a header name is a C string"
            pointer = None if header_value is None else mem(header_value)
            arg(_HEADER, header=_Header(name, pointer, 0 if header_value is None else len(header_value)))
        vus = (_Vu * len(args))(*args)
        error = self._lib.rd_kafka_produceva(self._rk, vus, len(args))
        if error:
            message = self._lib.rd_kafka_error_string(error).decode()
            self._lib.rd_kafka_error_destroy(error)
            raise RuntimeError(f"rd_kafka_produceva: {message}")

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record was sent (delivered or failed)."""
        self._lib.rd_kafka_flush(self._rk, int(timeout_s * 1000))
        assert self._lib.rd_kafka_outq_len(self._rk) == 0, "records still queued after flush"

    def close(self) -> None:
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> RawProducer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
