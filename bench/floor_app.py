"""The framework's floor: a bare Starlette JSON endpoint served by the same uvicorn stack.

genplane's throughput is reported as a fraction of this app's, measured in the same run on
the same machine, so the figure says what genplane's own work costs rather than how fast
the machine happens to be.
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"status": "success", "data": {"hello": "world"}})


app = Starlette(routes=[Route("/json", hello, methods=["GET", "POST"])])
