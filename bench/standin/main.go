// Command standin is an instant stand-in for a vLLM server: an infinitely fast GPU.
//
// It answers the OpenAI-compatible endpoints the job uses at once, with bodies of the
// shape vLLM gives, so that whatever limits the throughput of a client against it is
// the client. It is built and run by the bench (bench/standin.py), from the standard
// library only.
//
//	GET  /health                 200
//	GET  /v1/models              the one served model
//	GET  /metrics                vLLM's gauges: requests running (really in flight
//	                             here), none waiting, KV cache empty
//	POST /v1/chat/completions    choices[0].message.content, finish_reason "stop", usage
//	POST /v1/completions         choices[0].text, finish_reason "stop", usage
//	POST /v1/embeddings          one vector per item of `input`, each with its index
//	                             (floats, or base64 with "encoding_format": "base64")
//	GET  /standin/stats          JSON: POSTs answered, rows (embedding inputs count one
//	                             each), first POST received and last answer sent (Unix ns)
//	POST /standin/reset          zero those
//
// The first line on stdout is "standin: listening on http://HOST:PORT".
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// Counters of the POSTs answered since the last reset; times are Unix nanoseconds.
type stats struct {
	posts        atomic.Int64
	rows         atomic.Int64
	firstRequest atomic.Int64
	lastAnswer   atomic.Int64
	inFlight     atomic.Int64
}

func (s *stats) begin() {
	s.inFlight.Add(1)
	s.firstRequest.CompareAndSwap(0, time.Now().UnixNano())
}

func (s *stats) end(rows int64) {
	now := time.Now().UnixNano()
	for {
		last := s.lastAnswer.Load()
		if now <= last || s.lastAnswer.CompareAndSwap(last, now) {
			break
		}
	}
	s.posts.Add(1)
	s.rows.Add(rows)
	s.inFlight.Add(-1)
}

func (s *stats) reset() {
	s.posts.Store(0)
	s.rows.Store(0)
	s.firstRequest.Store(0)
	s.lastAnswer.Store(0)
}

type server struct {
	model      string
	chat       []byte
	completion []byte
	// One vector, as JSON floats and as base64 of little-endian float32s: every input
	// gets the same one (the client's cost of reading it does not depend on its values).
	vectorJSON   []byte
	vectorBase64 []byte
	stats        stats
}

// A float32 as vLLM writes it: Python's repr of the float64 it becomes.
func pyFloat(v float32) string {
	return strconv.FormatFloat(float64(v), 'g', -1, 64)
}

func newServer(model, answer string, dim int) *server {
	s := &server{model: model}
	created := time.Now().Unix()
	usage := map[string]any{
		"prompt_tokens": 24, "completion_tokens": 8, "total_tokens": 32,
		"prompt_tokens_details": nil,
	}
	s.chat = mustJSON(map[string]any{
		"id": "chatcmpl-standin", "object": "chat.completion", "created": created,
		"model": model,
		"choices": []any{map[string]any{
			"index": 0,
			"message": map[string]any{
				"role": "assistant", "content": answer, "reasoning_content": nil,
				"tool_calls": []any{},
			},
			"logprobs": nil, "finish_reason": "stop", "stop_reason": nil,
		}},
		"usage": usage, "prompt_logprobs": nil, "kv_transfer_params": nil,
	})
	s.completion = mustJSON(map[string]any{
		"id": "cmpl-standin", "object": "text_completion", "created": created,
		"model": model,
		"choices": []any{map[string]any{
			"index": 0, "text": answer, "logprobs": nil, "finish_reason": "stop",
			"stop_reason": nil, "prompt_logprobs": nil,
		}},
		"usage": usage, "kv_transfer_params": nil,
	})
	// A unit vector of seeded values, like a normalized sentence embedding.
	rng := rand.New(rand.NewSource(1))
	values := make([]float32, dim)
	norm := 0.0
	for i := range values {
		x := rng.NormFloat64()
		values[i] = float32(x)
		norm += x * x
	}
	var text bytes.Buffer
	raw := make([]byte, 4*dim)
	text.WriteByte('[')
	for i := range values {
		values[i] = float32(float64(values[i]) / math.Sqrt(norm))
		if i > 0 {
			text.WriteByte(',')
		}
		text.WriteString(pyFloat(values[i]))
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(values[i]))
	}
	text.WriteByte(']')
	s.vectorJSON = text.Bytes()
	s.vectorBase64 = mustJSON(base64.StdEncoding.EncodeToString(raw))
	return s
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

func reply(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func refuse(w http.ResponseWriter, status int, message string) {
	reply(w, status, mustJSON(map[string]any{"error": map[string]any{
		"message": message, "type": "BadRequestError", "param": nil, "code": status,
	}}))
}

// fixed answers a POST with a canned body, after reading the request to its end.
func (s *server) fixed(body func() []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			refuse(w, http.StatusMethodNotAllowed, "POST only")
			return
		}
		s.stats.begin()
		_, _ = io.Copy(io.Discard, r.Body)
		reply(w, http.StatusOK, body())
		s.stats.end(1)
	}
}

// inputs counts what an embeddings request's `input` holds: a string or a list of
// token ids is one input; a list of strings or of token lists is one per item.
func inputs(raw json.RawMessage) (int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, fmt.Errorf("the request has no input")
	}
	if raw[0] == '"' {
		return 1, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return 0, fmt.Errorf("input must be a string or a list: %v", err)
	}
	if len(items) == 0 {
		return 0, fmt.Errorf("input is an empty list")
	}
	if first := bytes.TrimSpace(items[0]); len(first) > 0 && (first[0] == '-' || (first[0] >= '0' && first[0] <= '9')) {
		return 1, nil
	}
	return len(items), nil
}

func (s *server) embeddings(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		refuse(w, http.StatusMethodNotAllowed, "POST only")
		return
	}
	s.stats.begin()
	var req struct {
		Input          json.RawMessage `json:"input"`
		EncodingFormat string          `json:"encoding_format"`
	}
	err := json.NewDecoder(r.Body).Decode(&req)
	n := 0
	if err == nil {
		n, err = inputs(req.Input)
	}
	if err != nil {
		refuse(w, http.StatusBadRequest, err.Error())
		s.stats.end(0)
		return
	}
	vector := s.vectorJSON
	if req.EncodingFormat == "base64" {
		vector = s.vectorBase64
	}
	var b bytes.Buffer
	b.Grow(n*(len(vector)+48) + 256)
	b.WriteString(`{"id":"embd-standin","object":"list","created":`)
	b.WriteString(strconv.FormatInt(time.Now().Unix(), 10))
	b.WriteString(`,"model":`)
	b.Write(mustJSON(s.model))
	b.WriteString(`,"data":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"index":`)
		b.WriteString(strconv.Itoa(i))
		b.WriteString(`,"object":"embedding","embedding":`)
		b.Write(vector)
		b.WriteByte('}')
	}
	tokens := strconv.Itoa(8 * n)
	b.WriteString(`],"usage":{"prompt_tokens":` + tokens + `,"total_tokens":` + tokens +
		`,"completion_tokens":0,"prompt_tokens_details":null}}`)
	reply(w, http.StatusOK, b.Bytes())
	s.stats.end(int64(n))
}

func (s *server) metrics(w http.ResponseWriter, r *http.Request) {
	labels := `{engine="0",model_name=` + strconv.Quote(s.model) + `}`
	text := "# HELP vllm:num_requests_running Number of requests in model execution batches.\n" +
		"# TYPE vllm:num_requests_running gauge\n" +
		"vllm:num_requests_running" + labels + " " + strconv.FormatInt(s.stats.inFlight.Load(), 10) + ".0\n" +
		"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n" +
		"# TYPE vllm:num_requests_waiting gauge\n" +
		"vllm:num_requests_waiting" + labels + " 0.0\n" +
		"# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n" +
		"# TYPE vllm:kv_cache_usage_perc gauge\n" +
		"vllm:kv_cache_usage_perc" + labels + " 0.0\n"
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = io.WriteString(w, text)
}

func (s *server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	models := mustJSON(map[string]any{"object": "list", "data": []any{map[string]any{
		"id": s.model, "object": "model", "created": time.Now().Unix(), "owned_by": "standin",
		"root": s.model, "parent": nil, "max_model_len": 4096,
	}}})
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, models)
	})
	mux.HandleFunc("/metrics", s.metrics)
	mux.HandleFunc("/v1/chat/completions", s.fixed(func() []byte { return s.chat }))
	mux.HandleFunc("/v1/completions", s.fixed(func() []byte { return s.completion }))
	mux.HandleFunc("/v1/embeddings", s.embeddings)
	mux.HandleFunc("/standin/stats", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, mustJSON(map[string]int64{
			"posts":              s.stats.posts.Load(),
			"rows":               s.stats.rows.Load(),
			"first_request_ns":   s.stats.firstRequest.Load(),
			"last_answer_ns":     s.stats.lastAnswer.Load(),
			"requests_in_flight": s.stats.inFlight.Load(),
		}))
	})
	mux.HandleFunc("/standin/reset", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			refuse(w, http.StatusMethodNotAllowed, "POST only")
			return
		}
		s.stats.reset()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
	model := flag.String("model", "standin", "the served model name /v1/models lists")
	dim := flag.Int("dim", 384, "embedding dimensions")
	answer := flag.String("answer", "An instant answer from the stand-in server.", "the answer text")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("standin: listening on http://%s\n", ln.Addr())
	_ = os.Stdout.Sync()
	srv := &http.Server{Handler: newServer(*model, *answer, *dim).routes()}
	log.Fatal(srv.Serve(ln))
}
