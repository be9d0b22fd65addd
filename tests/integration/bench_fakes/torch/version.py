cuda = "fake"
