"""The CLI's logging: short warnings by default, everything with ``--debug``, and never a presigned
URL's signature (so ``--debug`` output can be pasted into a bug report)."""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["configure_logging", "mask_signatures"]


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"pdcat: {record.levelname.lower()}: {record.getMessage()}"


# The parts of a presigned URL that authorise it: S3's SigV4 signature, credential scope and session
# token, an Azure SAS's ``sig``, the embedded store's ``signature``. The name may follow a raw or a
# percent-encoded ``?``/``&`` (a URL quoted inside another one); the value ends at the next parameter.
_SIGNED_PARAM = re.compile(
    r"((?:[?&]|%26|%3F)(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|sig|signature)(?:=|%3D))"
    r"(?:(?!%26)[^&\s\"'<>#\\])*",
    re.IGNORECASE,
)


def mask_signatures(text: str) -> str:
    """``text`` with the secret part of every presigned URL replaced by ``***`` (the rest kept)."""
    return _SIGNED_PARAM.sub(r"\1***", text)


class _MaskSignatures(logging.Filter):
    """On the CLI's handler: no log line (pdcat's, httpx's or httpcore's, exceptions included) ever
    shows a presigned URL's signature, so ``--debug`` output can be pasted into a bug report."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it, with nothing formatted
            return True
        record.msg, record.args = mask_signatures(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_signatures(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_signatures(record.stack_info)
        return True


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines through the same rich console as the progress bar, so a retry warning prints above
    a running bar instead of into it (rich is loaded only once something is logged)."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream not in (sys.stderr, sys.__stderr__):  # redirected (tests, embedding): as any handler
            super().emit(record)
            return
        try:
            text = self.format(record)
            from client.output import err_console

            err_console().print(text, markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def configure_logging(debug: bool) -> None:
    """Warnings (retries, re-fetched chunks) as short prefixed lines; everything with --debug.

    Either way, presigned URLs are logged without their signatures (``_MaskSignatures``).
    """
    handler = _ConsoleHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s") if debug else _WarningFormatter())
    handler.addFilter(_MaskSignatures())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.ERROR)
