"""Runs `gcp-storage-emulator` with GCS's generation preconditions honoured.

The emulator ignores `ifGenerationMatch`; real GCS answers 412 when it does not hold, and
`if_generation_match=0` (create only if absent) is how loom's writer lock takes a root
(schemas/lock.py). This launcher wraps the emulator's upload, download and delete
handlers with that one check, as GCS documents it, and then starts the emulator's own
command line (`python tests/gcs_preconditions.py start ...`). Requests without a
precondition are untouched.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> int:
    try:
        return int(storage.get_file_obj(bucket, name).get("generation") or 0)
    except NotFound:
        return 0  # GCS: generation 0 means "no live object"


def _object_name(request) -> str | None:
    if "object_id" in request.params:
        return request.params["object_id"]
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
        return data["meta"].get("name")
    return None


def _checked(handler):
    def wrapped(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        name = _object_name(request)
        if want and name is not None:
            have = _generation(storage, request.params["bucket_name"], name)
            if int(want[0]) != have:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {
                    "code": 412, "message": "At least one of the pre-conditions you specified "
                                            "did not hold.",
                    "errors": [{"reason": "conditionNotMet", "domain": "global",
                                "message": "Precondition Failed"}]}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


DOWNLOAD_MARK = "loom-download "  # one line per object content request (GcsEmulator.downloads)


def _counted(handler):
    """Log each content download (a GET of an object's bytes), so tests can count reads."""
    def wrapped(request, response, storage, *args, **kwargs):
        print(f"{DOWNLOAD_MARK}{request.params.get('bucket_name')}/"
              f"{request.params.get('object_id')}", flush=True)
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


def patch() -> None:
    targets = {objects.insert, objects.delete, objects.download, objects.get}
    download = objects.download
    objects.download = _counted(download)  # what `get` calls for ?alt=media
    for _, methods in server.HANDLERS:
        for method, fn in list(methods.items()):
            if fn in targets:
                methods[method] = _checked(objects.download if fn is download else fn)


if __name__ == "__main__":
    patch()
    main(sys.argv[1:])
