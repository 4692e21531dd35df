-- wrk script: client_credentials grant with client_secret_basic.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BASIC")
wrk.body = "grant_type=client_credentials&scope=orders%2Fread"
