package tollgatetest

import (
	"net/http"
	"time"
)

// modelInfo is one entry of the model listing.
type modelInfo struct {
	id, name string
	created  time.Time
}

// anthropicModels and openAIModels are what GET /v1/models lists.
var (
	anthropicModels = []modelInfo{
		{"claude-opus-5-5", "Claude Opus 5.5", time.Date(2026, 9, 15, 0, 0, 0, 0, time.UTC)},
		{"claude-sonnet-5-5", "Claude Sonnet 5.5", time.Date(2026, 9, 15, 0, 0, 0, 0, time.UTC)},
		{"claude-haiku-5-5", "Claude Haiku 5.5", time.Date(2026, 9, 15, 0, 0, 0, 0, time.UTC)},
		{"claude-sonnet-5", "Claude Sonnet 5", time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)},
		{"claude-opus-4-5", "Claude Opus 4.5", time.Date(2025, 11, 24, 0, 0, 0, 0, time.UTC)},
		{"claude-sonnet-4-5", "Claude Sonnet 4.5", time.Date(2025, 9, 29, 0, 0, 0, 0, time.UTC)},
		{"claude-haiku-4-5", "Claude Haiku 4.5", time.Date(2025, 10, 15, 0, 0, 0, 0, time.UTC)},
		{"claude-3-5-haiku-20241022", "Claude Haiku 3.5", time.Date(2024, 10, 22, 0, 0, 0, 0, time.UTC)},
	}
	openAIModels = []modelInfo{
		{"gpt-4o", "", time.Date(2024, 5, 13, 0, 0, 0, 0, time.UTC)},
		{"gpt-4o-mini", "", time.Date(2024, 7, 18, 0, 0, 0, 0, time.UTC)},
		{"gpt-4.1", "", time.Date(2025, 4, 14, 0, 0, 0, 0, time.UTC)},
	}
)

type anthropicModel struct {
	Type        string `json:"type"`
	ID          string `json:"id"`
	DisplayName string `json:"display_name"`
	CreatedAt   string `json:"created_at"`
}

type openAIModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// models serves GET /v1/models (id "") and GET /v1/models/{id}, in the
// dialect of the request, without touching any bucket and without
// rate-limit headers.
func (x *exchange) models(id string) {
	if x.r.Method != http.MethodGet {
		x.w.Header().Set("Allow", http.MethodGet)
		x.errorResponse(http.StatusMethodNotAllowed, "invalid_request_error", "Method "+x.r.Method+" not allowed; use GET")
		return
	}
	if !x.authorized() {
		return
	}
	list := anthropicModels
	if x.api == openAIAPI {
		list = openAIModels
	}
	render := func(m modelInfo) any {
		if x.api == anthropicAPI {
			return anthropicModel{Type: "model", ID: m.id, DisplayName: m.name, CreatedAt: m.created.Format(time.RFC3339)}
		}
		return openAIModel{ID: m.id, Object: "model", Created: m.created.Unix(), OwnedBy: "openai"}
	}
	if id != "" {
		for _, m := range list {
			if m.id == id {
				x.writeJSON(http.StatusOK, render(m))
				return
			}
		}
		if x.api == anthropicAPI {
			x.errorResponse(http.StatusNotFound, "not_found_error", "model: "+id)
		} else {
			x.errorResponseCode(http.StatusNotFound, "invalid_request_error", "The model '"+id+"' does not exist", "model_not_found")
		}
		return
	}
	data := make([]any, len(list))
	for i, m := range list {
		data[i] = render(m)
	}
	if x.api == anthropicAPI {
		x.writeJSON(http.StatusOK, map[string]any{"data": data, "has_more": false,
			"first_id": list[0].id, "last_id": list[len(list)-1].id})
		return
	}
	x.writeJSON(http.StatusOK, map[string]any{"object": "list", "data": data})
}
