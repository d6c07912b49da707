-- wrk script for .ci/soak.sh: drives the mesh_demo gateway (3 of 4 requests
-- to /orders, the flapping upstream; 1 of 4 to /catalog, the healthy one)
-- and classifies each response by status and body:
--
--   200                                                expected
--   503 "service unavailable: circuit open"            expected: a breaker refused the call
--   500 "injected failure\n" (the flaky upstream's)    expected: forwarded as is by the gateway
--   anything else                                      unexpected (502, 504, a bare 500, ...)
--
-- Which breaker refused a call is not in the response (the body names no
-- upstream): soak.sh checks from /metrics that only `orders` ever refused.
-- done() writes one `key count` line per counter to $SOAK_COUNTS_FILE, with
-- wrk's own socket errors (connect, read, write, timeout), the request total
-- and latency percentiles. $SOAK_DELAY_MS (default 0) is the pause between
-- two requests on one connection, to keep the load moderate.

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    counts = {}
    n = 0
    pause = tonumber(os.getenv("SOAK_DELAY_MS") or "0") or 0
    orders = wrk.format("GET", "/orders")
    catalog = wrk.format("GET", "/catalog")
end

function request()
    n = n + 1
    if n % 4 == 0 then
        return catalog
    end
    return orders
end

if (tonumber(os.getenv("SOAK_DELAY_MS") or "0") or 0) > 0 then
    function delay()
        return pause
    end
end

local function bump(key)
    counts[key] = (counts[key] or 0) + 1
end

function response(status, headers, body)
    bump("status_" .. status)
    if status == 200 then
        bump("expected")
    elseif status == 503 and body == "service unavailable: circuit open" then
        if headers["retry-after"] or headers["Retry-After"] then
            bump("retry_after")
        end
        bump("expected")
    elseif status == 500 and body == "injected failure\n" then
        bump("expected")
    else
        bump("unexpected")
        if not first_unexpected then
            first_unexpected = status .. " " .. string.gsub(string.sub(body or "", 1, 80), "%s+", " ")
        end
    end
end

function done(summary, latency, requests)
    local total = {}
    local sample = nil
    for _, thread in ipairs(threads) do
        sample = sample or thread:get("first_unexpected")
        local c = thread:get("counts")
        for k, v in pairs(c) do
            total[k] = (total[k] or 0) + v
        end
    end
    total["wrk_requests"] = summary.requests
    total["wrk_duration_us"] = summary.duration
    total["err_connect"] = summary.errors.connect
    total["err_read"] = summary.errors.read
    total["err_write"] = summary.errors.write
    total["err_timeout"] = summary.errors.timeout
    total["latency_p50_us"] = latency:percentile(50)
    total["latency_p99_us"] = latency:percentile(99)
    total["latency_max_us"] = latency.max
    local path = os.getenv("SOAK_COUNTS_FILE")
    local out = path and io.open(path, "w") or io.stdout
    local keys = {}
    for k in pairs(total) do
        table.insert(keys, k)
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
        out:write(string.format("%s %d\n", k, math.floor(total[k])))
    end
    if sample then
        out:write("first_unexpected " .. sample .. "\n")
    end
    if path then
        out:close()
    end
end
