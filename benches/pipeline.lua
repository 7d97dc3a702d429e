-- HTTP/1.1 pipelining for wrk: each write carries `depth` GET requests back to back,
-- and wrk counts one request per response it parses.
--
--   wrk -t1 -c100 -d10s -s benches/pipeline.lua http://127.0.0.1:8080/
--
-- Used by benches/http_load.rs (pipelined mode). The depth is 16; the path is the
-- one given on wrk's command line.

local depth = 16

init = function(args)
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format(nil, nil)
   end
   req = table.concat(r)
end

request = function()
   return req
end
