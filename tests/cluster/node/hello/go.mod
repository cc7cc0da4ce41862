module github.com/mapguard/mapguard/tests/cluster/node/hello

go 1.23
