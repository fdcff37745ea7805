module bru/bench/go-pipe

go 1.19
