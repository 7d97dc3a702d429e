module gracering/benches/peers/go

go 1.19
