# Render a BOSH job's templates the way the director does (ERB with p/if_p/spec), strictly:
# a template that reads a property its job spec does not declare fails.
#   ruby render.rb JOB_DIR PROPERTIES_JSON OUT_DIR
require "erb"
require "json"
require "yaml"
require "shellwords"
require "ostruct"
require "set"
require "fileutils"

class StrictRenderer
  attr_reader :used

  def initialize(spec, properties)
    @spec_props = spec["properties"] || {}
    @properties = properties
    @used = Set.new
    @job_name = spec["name"]
  end

  def lookup(name)
    name.split(".").reduce(@properties) { |acc, key| acc.is_a?(Hash) ? acc[key] : nil }
  end

  def p(name, *default)
    unless @spec_props.key?(name)
      raise "template reads property '#{name}', which the job spec does not declare"
    end
    @used << name
    value = lookup(name)
    return value unless value.nil?
    return @spec_props[name]["default"] if @spec_props[name].key?("default")
    return default.first unless default.empty?
    raise "property '#{name}' has no value and no default"
  end

  def if_p(*names)
    values = names.map { |n| p(n, nil) }
    yield(*values) unless values.any?(&:nil?)
  end

  def spec
    OpenStruct.new(name: "bosh", index: 0, id: "b1", address: "10.245.0.11", ip: "10.245.0.11",
                   deployment: "bosh", job: OpenStruct.new(name: @job_name))
  end

  def render(text)
    ERB.new(text, trim_mode: "-").result(binding)
  end
end

job_dir, props_file, out_dir = ARGV
spec = YAML.safe_load(File.read(File.join(job_dir, "spec")))
renderer = StrictRenderer.new(spec, JSON.parse(File.read(props_file)))
outputs = (spec["templates"] || {}).map { |src, dst| [File.join(job_dir, "templates", src), dst] }
outputs << [File.join(job_dir, "monit"), "monit"] if File.exist?(File.join(job_dir, "monit"))
outputs.each do |src, dst|
  path = File.join(out_dir, dst)
  FileUtils.mkdir_p(File.dirname(path))
  File.write(path, renderer.render(File.read(src)))
end
File.write(File.join(out_dir, "used-properties.json"), JSON.dump(renderer.used.to_a.sort))
