"""The framework's ceiling: the floor's endpoint as a FastAPI route with one dependency.

Every genplane operation is a FastAPI route whose dependency authenticates the caller,
so no operation can be faster than this app. Printing it beside the bare Starlette floor
shows how much of the gap is the framework's and how much is genplane's own work.
"""

from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Request
from starlette.responses import Response


async def bearer(request: Request) -> str:
    return request.headers.get("authorization", "")


app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.api_route("/json", methods=["GET", "POST"])
async def hello(token: Annotated[str, Depends(bearer)]) -> Response:
    return Response(
        orjson.dumps({"status": "success", "data": {"hello": "world"}}), media_type="application/json"
    )
