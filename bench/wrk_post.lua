-- POST the body given in WRK_BODY (JSON) to the URL under test.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY") or '{"features": [0.5, -1.2]}'
wrk.headers["Content-Type"] = "application/json"
