-- wrk: each request carries the next token of the file $TOKENS in the access cookie.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = line
end
local i = 0

request = function()
    i = i % #tokens + 1
    return wrk.format("GET", nil, { ["Cookie"] = "__Host-portcullis-access=" .. tokens[i] })
end
