"""The engines: the student's sampler and the teacher's scorer (built-in lean and fused CPU engines, vLLM in process, a vLLM server), behind the Sampler and Teacher interfaces."""
