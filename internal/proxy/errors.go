package proxy

import (
	"encoding/json"
	"net/http"
)

// writeError answers with an error document in the provider's shape, so an
// SDK reports it as it would the API's own.
func writeError(w http.ResponseWriter, provider providerIndex, status int, kind, message string) {
	var doc any
	if provider == anthropicAPI {
		type body struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		}
		doc = struct {
			Type  string `json:"type"`
			Error body   `json:"error"`
		}{"error", body{kind, message}}
	} else {
		type body struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    string  `json:"code"`
		}
		doc = struct {
			Error body `json:"error"`
		}{body{Message: message, Type: kind, Code: kind}}
	}
	b, _ := json.Marshal(doc)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
