package dashboard

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Metrics returns a MeterProvider whose metrics the returned handler serves
// in Prometheus's text format, through the OpenTelemetry Prometheus
// exporter and a registry of their own (not Prometheus's global one, so
// several can live in one process). Give the provider to every Transport
// whose metrics it should serve, and the handler to your mux:
//
//	mp, metrics, err := dashboard.Metrics()
//	if err != nil { … }
//	defer mp.Shutdown(context.Background())
//	rt := tollgate.New(nil, tollgate.WithMeterProvider(mp))
//	mux.Handle("/metrics", metrics)
//
// tollgate's metrics carry no API key: their attributes are the provider,
// the model family, the limit's dimension and such (see package tollgate).
func Metrics() (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("dashboard: prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}
