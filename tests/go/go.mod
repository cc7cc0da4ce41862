module mapguard.test/progs

go 1.23
