"""gcp-storage-emulator (PyPI) with the answers of GCS's XML API that it lacks and that
object_store relies on, for tracegate's archive tests (scripts/cloud-emulators.sh starts it):

- an upload (`PUT /<bucket>/<object>`) answers with the object's `ETag` (object_store reads the
  new object's metadata from it and fails without it);
- `x-goog-if-generation-match: 0` (create only if absent, object_store's `PutMode::Create`) is
  honoured: an existing object gives 412 Precondition Failed, as GCS does. The archive relies on
  it to keep the first object of a group written twice;
- a download answers with the object's `Last-Modified` and `ETag`, as GCS does;
- listing a bucket (`GET /<bucket>?list-type=2&prefix=…&delimiter=…`, the S3-compatible XML
  answer GCS gives) from the emulator's own object list, in one page.

Everything else is the emulator as published. Arguments are the emulator's own (`start …`).
"""

import sys
from datetime import datetime
from email.utils import format_datetime
from http import HTTPStatus
from xml.sax.saxutils import escape

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_original = objects.xml_upload
_download = objects.download


def xml_upload(request, response, storage, *args, **kwargs):
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    if request.get_header("x-goog-if-generation-match") == "0":
        try:
            storage.get_file_obj(bucket, name)
            response.status = HTTPStatus.PRECONDITION_FAILED
            return
        except NotFound:
            pass
    _original(request, response, storage, *args, **kwargs)
    if response.status in (None, HTTPStatus.OK):
        try:
            obj = storage.get_file_obj(bucket, name)
            response["ETag"] = '"{}"'.format(obj.get("etag") or obj.get("md5Hash"))
            response["x-goog-generation"] = str(obj.get("generation", "1"))
        except NotFound:
            pass


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        return
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return
    updated = datetime.fromisoformat(obj["updated"].replace("Z", "+00:00"))
    response["Last-Modified"] = format_datetime(updated, usegmt=True)
    response["ETag"] = '"{}"'.format(obj.get("etag", ""))


def xml_list(request, response, storage, *args, **kwargs):
    bucket = request.params["bucket_name"]
    query = {k: v[0] for k, v in request.query.items()}
    if query.get("list-type") != "2":
        response.status = HTTPStatus.NOT_IMPLEMENTED
        return
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
    after = query.get("start-after", "")
    try:
        objs, prefixes = storage.get_file_list(bucket, prefix or None, delimiter)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    parts = ['<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>']
    parts.append("<Name>{}</Name><Prefix>{}</Prefix>".format(escape(bucket), escape(prefix)))
    for o in objs:
        if o["name"] <= after:
            continue
        parts.append(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>\"{}\"</ETag>"
            "<Size>{}</Size></Contents>".format(
                escape(o["name"]), o["updated"], escape(o.get("etag", "")), int(o["size"])
            )
        )
    for p in prefixes:
        parts.append("<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>".format(escape(p)))
    parts.append("</ListBucketResult>")
    response["Content-type"] = "application/xml"
    response.write("".join(parts))


for _regex, methods in server.HANDLERS:
    for method, handler in list(methods.items()):
        if handler is _original:
            methods[method] = xml_upload
        elif handler is _download:
            methods[method] = download

server.HANDLERS = ((r"^/(?P<bucket_name>[-.\w]+)$", {server.GET: xml_list}),) + tuple(
    server.HANDLERS
)

if __name__ == "__main__":
    main(sys.argv[1:])
