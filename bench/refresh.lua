-- wrk script: refresh_token grant with rotation. Each thread keeps a queue of live refresh
-- tokens (from TOKENS_FILE); every response's new refresh token replaces the one it used.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  queue = {}
  local nthreads = tonumber(os.getenv("THREADS"))
  local i = 0
  for line in io.lines(os.getenv("TOKENS_FILE")) do
    if i % nthreads == tid then table.insert(queue, line) end
    i = i + 1
  end
  client_id = os.getenv("CLIENT_ID")
  failures = 0
end

function request()
  local token = table.remove(queue, 1)
  if token == nil then token = "exhausted" end
  return wrk.format("POST", nil, { ["Content-Type"] = "application/x-www-form-urlencoded" },
    "grant_type=refresh_token&client_id=" .. client_id .. "&refresh_token=" .. token)
end

function response(status, headers, body)
  local next = string.match(body, '"refresh_token":"([^"]+)"')
  if next then table.insert(queue, next) else failures = failures + 1 end
end
