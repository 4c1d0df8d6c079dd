// metrics-adapter serves per-pod custom metrics (custom.metrics.k8s.io) from Prometheus, the
// way prometheus-adapter does with one `custom` rule, so the tests can drive the real
// HorizontalPodAutoscaler controller on chat-node's `websocket_active_connections`.
//
// prometheus-adapter itself is not served by the Go module proxy this machine reaches; this
// program is built on the same library it is built on (sigs.k8s.io/custom-metrics-apiserver: the
// aggregated API server, delegated authentication and authorization, discovery) and evaluates the
// rule docs/autoscaling.md documents: for each metric named with --metric it answers
//
//	<metrics-query> with <<.Series>> = the metric, <<.LabelMatchers>> = namespace="<ns>",pod=~"<pods>"
//	and <<.GroupBy>> = pod
//
// against --prometheus-url, for the pods the HPA's selector matches (listed from the API server).
// A pod Prometheus has no sample for is left out, as prometheus-adapter does.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"

	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider/helpers"
)

// The rule's query, as in docs/autoscaling.md.
const defaultMetricsQuery = `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)`

var podsResource = schema.GroupResource{Resource: "pods"}

type prometheusProvider struct {
	mapper     apimeta.RESTMapper
	client     dynamic.Interface
	prometheus string
	query      string
	metrics    []string
	http       *http.Client
}

func (p *prometheusProvider) ListAllMetrics() []provider.CustomMetricInfo {
	infos := make([]provider.CustomMetricInfo, 0, len(p.metrics))
	for _, m := range p.metrics {
		infos = append(infos, provider.CustomMetricInfo{GroupResource: podsResource, Namespaced: true, Metric: m})
	}
	return infos
}

func (p *prometheusProvider) served(info provider.CustomMetricInfo) bool {
	if info.GroupResource != podsResource || !info.Namespaced {
		return false
	}
	for _, m := range p.metrics {
		if m == info.Metric {
			return true
		}
	}
	return false
}

func (p *prometheusProvider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	values, err := p.values(ctx, name.Namespace, []string{name.Name}, info, metricSelector)
	if err != nil {
		return nil, err
	}
	if len(values) == 0 {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	return &values[0], nil
}

func (p *prometheusProvider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValueList, error) {
	names, err := helpers.ListObjectNames(p.mapper, p.client, namespace, selector, info)
	if err != nil {
		return nil, err
	}
	values, err := p.values(ctx, namespace, names, info, metricSelector)
	if err != nil {
		return nil, err
	}
	return &custom_metrics.MetricValueList{Items: values}, nil
}

// values asks Prometheus for the metric of the named pods.
func (p *prometheusProvider) values(ctx context.Context, namespace string, pods []string, info provider.CustomMetricInfo, metricSelector labels.Selector) ([]custom_metrics.MetricValue, error) {
	if !p.served(info) {
		return nil, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	if len(pods) == 0 {
		return []custom_metrics.MetricValue{}, nil
	}
	quoted := make([]string, len(pods))
	for i, pod := range pods {
		quoted[i] = regexp.QuoteMeta(pod)
	}
	matchers := fmt.Sprintf(`namespace=%q,pod=~%q`, namespace, strings.Join(quoted, "|"))
	query := strings.NewReplacer(
		"<<.Series>>", info.Metric,
		"<<.LabelMatchers>>", matchers,
		"<<.GroupBy>>", "pod",
	).Replace(p.query)
	samples, err := p.instantQuery(ctx, query)
	if err != nil {
		return nil, err
	}
	var selector *metav1.LabelSelector
	if s := metricSelector.String(); s != "" {
		if selector, err = metav1.ParseToLabelSelector(s); err != nil {
			return nil, err
		}
	}
	values := make([]custom_metrics.MetricValue, 0, len(samples))
	for _, pod := range pods {
		sample, ok := samples[pod]
		if !ok {
			continue
		}
		ref, err := helpers.ReferenceFor(p.mapper, types.NamespacedName{Namespace: namespace, Name: pod}, info)
		if err != nil {
			return nil, err
		}
		values = append(values, custom_metrics.MetricValue{
			DescribedObject: ref,
			Metric:          custom_metrics.MetricIdentifier{Name: info.Metric, Selector: selector},
			Timestamp:       metav1.NewTime(sample.at),
			Value:           *resource.NewMilliQuantity(int64(sample.value*1000), resource.DecimalSI),
		})
	}
	return values, nil
}

type sample struct {
	value float64
	at    time.Time
}

// instantQuery runs a PromQL query and returns each series' value by its `pod` label.
func (p *prometheusProvider) instantQuery(ctx context.Context, query string) (map[string]sample, error) {
	endpoint := p.prometheus + "/api/v1/query?" + url.Values{"query": {query}}.Encode()
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, err
	}
	response, err := p.http.Do(request)
	if err != nil {
		return nil, fmt.Errorf("query Prometheus: %w", err)
	}
	defer response.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(response.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("read Prometheus' answer (HTTP %d): %w", response.StatusCode, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("Prometheus refused %q: %s", query, body.Error)
	}
	if body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("Prometheus answered %q with a %s, not a vector", query, body.Data.ResultType)
	}
	samples := make(map[string]sample, len(body.Data.Result))
	for _, series := range body.Data.Result {
		at, ok := series.Value[0].(float64)
		text, ok2 := series.Value[1].(string)
		if !ok || !ok2 {
			return nil, fmt.Errorf("unexpected sample %v", series.Value)
		}
		value, err := strconv.ParseFloat(text, 64)
		if err != nil {
			return nil, fmt.Errorf("sample %q: %w", text, err)
		}
		seconds := int64(at)
		samples[series.Metric["pod"]] = sample{
			value: value,
			at:    time.Unix(seconds, int64((at-float64(seconds))*1e9)),
		}
	}
	return samples, nil
}

type adapter struct {
	basecmd.AdapterBase
	prometheus string
	query      string
	metrics    []string
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	cmd := &adapter{}
	cmd.Name = "chatcluster-metrics-adapter"
	cmd.Flags().StringVar(&cmd.prometheus, "prometheus-url", "", "base URL of the Prometheus to query")
	cmd.Flags().StringVar(&cmd.query, "metrics-query", defaultMetricsQuery, "the rule's metricsQuery")
	cmd.Flags().StringSliceVar(&cmd.metrics, "metric", nil, "a per-pod metric to serve (repeatable)")
	logs.AddFlags(cmd.Flags())
	if err := cmd.Flags().Parse(os.Args); err != nil {
		klog.Fatalf("unable to parse flags: %v", err)
	}
	if cmd.prometheus == "" || len(cmd.metrics) == 0 {
		klog.Fatal("--prometheus-url and at least one --metric are required")
	}
	client, err := cmd.DynamicClient()
	if err != nil {
		klog.Fatalf("dynamic client: %v", err)
	}
	mapper, err := cmd.RESTMapper()
	if err != nil {
		klog.Fatalf("REST mapper: %v", err)
	}
	cmd.WithCustomMetrics(&prometheusProvider{
		mapper:     mapper,
		client:     client,
		prometheus: strings.TrimSuffix(cmd.prometheus, "/"),
		query:      cmd.query,
		metrics:    cmd.metrics,
		http:       &http.Client{Timeout: 10 * time.Second},
	})
	if err := cmd.Run(context.Background()); err != nil {
		klog.Fatalf("unable to run the metrics adapter: %v", err)
	}
}
