-- wrk script: POST /predict with varied features (1000 bodies, cycled).
-- Usage: wrk -t1 -c8 -d10s -s bench/predict.lua http://127.0.0.1:9102/predict
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local bodies = {}
math.randomseed(42)
for i = 1, 1000 do
  bodies[i] = string.format('{"features": [%.6f, %.6f]}',
    math.random() * 6 - 3, math.random() * 6 - 3)
end
local n = 0

function request()
  n = n % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[n])
end

local errors = 0
function response(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end
