package redisstore_test

import (
	"context"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/redisstore"
)

// Every process that calls the API with the same key shares its budget and
// its pauses through one Redis. While Redis fails, each process paces on its
// own at a share of the limits (tollgate.WithStoreFallback). When the
// process stops, Flush gives the others what its last calls did not use
// before the Redis client closes.
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rdb.Close()

	rt := tollgate.New(nil, tollgate.WithStore(redisstore.New(rdb)))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Flush(ctx)
	}()
	client := &http.Client{Transport: rt}
	_ = client // give it to an SDK: option.WithHTTPClient(client)
}
