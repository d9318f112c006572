package redisstore_test

import (
	"net/http"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/redisstore"
)

// Every process that calls the API with the same key shares its budget and
// its pauses through one Redis. While Redis fails, each process paces on its
// own at a share of the limits (tollgate.WithStoreFallback).
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rdb.Close()

	rt := tollgate.New(nil, tollgate.WithStore(redisstore.New(rdb)))
	client := &http.Client{Transport: rt}
	_ = client // give it to an SDK: option.WithHTTPClient(client)
}
