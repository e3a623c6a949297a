"""F&O data management (DMF): the blob endpoint packages are uploaded to and downloaded from.

The DMF package API is split in its concerns:

- `dmf_jobs.py`: the OData actions (api-surface §4) and the job queue — `DmfService`, handed the
  `POST {finops_url}/data/DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities.{Action}`
  calls by `finops.py`; exports write packages, imports read them;
- `dmf_import.py`: one package entity imported into its F&O table, row by row rules and write hooks;
- `dmf_package.py`: the entities DMF knows and the package format (manifest, CSV-Unicode files);
- `dmf_blobs.py`: blob files and their signed (SAS-like) URLs;
- here: the HTTP endpoint `/blob/dmf/{name}` (PUT BlockBlob, GET). Errors are Azure Storage XML
  bodies (403 `AuthenticationFailed`, 400 `MissingRequiredHeader` for a PUT without
  `x-ms-blob-type: BlockBlob`, 404 `BlobNotFound`).

Import: `GetAzureWriteUrl` → `PUT` the package to the blob URL → `ImportFromPackage` → poll
`GetExecutionSummaryStatus` → `GetExecutionErrors`. Export: `ExportToPackage` → poll →
`GetExportedPackageUrl` (empty until done) → `GET` the blob.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .context import Sandbox
from .dmf_blobs import SAS_VERSION, BlobAuthError
from .dmf_jobs import service_of


def _storage_error(exc: BlobAuthError) -> Response:
    request_id = str(uuid.uuid4())
    extra = f"<AuthenticationErrorDetail>{escape(exc.detail)}</AuthenticationErrorDetail>" * bool(exc.detail)
    extra += f"<HeaderName>{exc.header}</HeaderName>" * bool(exc.header)
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{exc.code}</Code>'
            f"<Message>{escape(exc.message)}\nRequestId:{request_id}\nTime:{datetime.now(UTC).isoformat()}</Message>{extra}</Error>")
    return Response(body, status_code=exc.status, media_type="application/xml",
                    headers={"x-ms-error-code": exc.code, "x-ms-request-id": request_id,
                             "x-ms-version": SAS_VERSION})


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """The blob endpoint `/blob/dmf/{name}` (PUT BlockBlob, GET); also creates `sbx.extras["dmf"]`.

    server.py: Starlette(routes=[*dmf.routes(sbx), ...])
    """
    service = service_of(sbx)

    async def blob(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            path = service.blobs.path(name)
            service.blobs.check(name, request.url.query, "w" if request.method == "PUT" else "r")
            if request.method == "PUT":
                kind = request.headers.get("x-ms-blob-type")
                if kind is None:
                    raise BlobAuthError("MissingRequiredHeader", "An HTTP header that's mandatory for this "
                                        "request is not specified.", 400, header="x-ms-blob-type")
                if kind != "BlockBlob":
                    raise BlobAuthError("InvalidHeaderValue", "The value for one of the HTTP headers is not "
                                        "in the correct format.", 400, header="x-ms-blob-type")
                data = await request.body()
                tmp = path.with_name(f".{name}.{uuid.uuid4().hex}")
                tmp.write_bytes(data)
                tmp.replace(path)
                md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                return Response(status_code=201, headers={**_blob_headers(path), "Content-MD5": md5,
                                                          "x-ms-request-server-encrypted": "true"})
            if not path.is_file():
                raise BlobAuthError("BlobNotFound", "The specified blob does not exist.", 404)
            return Response(path.read_bytes(), media_type="application/octet-stream",
                            headers={**_blob_headers(path), "x-ms-blob-type": "BlockBlob"})
        except BlobAuthError as exc:
            return _storage_error(exc)

    return [Route("/blob/dmf/{name}", blob, methods=["GET", "PUT"])]


def _blob_headers(path: Path) -> dict[str, str]:
    st = path.stat()
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return {"ETag": f'"0x{st.st_mtime_ns:X}{st.st_size:X}"',
            "Last-Modified": format_datetime(modified, usegmt=True), "x-ms-version": SAS_VERSION,
            "x-ms-request-id": str(uuid.uuid4())}
